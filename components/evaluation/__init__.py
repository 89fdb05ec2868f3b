"""The evaluate step's library (the story is :func:`components.evaluate.evaluate`):

- ``inputs``: the checkpoint, its language, the checks that the tokenize folder belongs to it;
- ``splits``: which splits are evaluated (default all but train) and which gate the promotion;
- ``evaluator``: the prediction loop over a split (DenseCRF in worker processes meanwhile);
- ``pooling``: several splits as one (the gate's pooled metrics, the per-sample table);
- ``results``: the results table (rows dataset x language, columns the splits), JSON and HTML;
- ``crf``: DenseCRF refinement and its worker pool;
- ``metrics``: IoU, overall IoU, mean IoU, Precision@X (the one metrics module; training's
  validation uses it too);
- ``sanity``: the shuffled-expression row (does the model use the language?);
- ``examples`` and ``report``: the best and worst examples and the self-contained HTML report;
- ``outputs``: ``metrics.json`` and ``per_sample.parquet``;
- ``tracking``: the metrics, tags and files on the training run in MLflow.
"""
