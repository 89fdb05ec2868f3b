"""What the train step (components/train.py) is made of.

- ``config``: TrainConfig, ``--set`` parsing, and ``load_run_config``: the one loader of a run's
  (ModelConfig, TrainConfig) from a config of ``configs/`` or a YAML file.
- ``trainer``: the Trainer (build, resume, step, validate, save; ``fit`` is the loop).
- ``distributed``: the process group under torchrun and each process's device.
- ``state``: RNG states and the resume file.
- ``tracking``: MLflow (params, buffered metrics, tags, artifacts) on rank 0.
- ``schedule``: Adam and the warm-up + polynomial-decay learning rate.
- ``validation``: the model's masks on the validation split, scored by components.evaluation.metrics.
"""
