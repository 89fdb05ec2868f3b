"""The evaluate step's library (the story is :func:`components.evaluate.evaluate`):

- ``inputs``: the checkpoint, its language, the checks that the tokenize folder belongs to it;
- ``evaluator``: the prediction loop over a split (DenseCRF in worker processes meanwhile);
- ``crf``: DenseCRF refinement and its worker pool;
- ``metrics``: IoU, overall IoU, mean IoU, Precision@X (the one metrics module; training's
  validation uses it too);
- ``sanity``: the shuffled-expression row (does the model use the language?);
- ``examples`` and ``report``: the best and worst examples and the self-contained HTML report;
- ``outputs``: ``metrics.json`` and ``per_sample.parquet``;
- ``tracking``: the metrics and files on the training run in MLflow.
"""
