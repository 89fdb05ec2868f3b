"""Kubeflow components: one thin ``@dsl.component`` per pipeline step, each a wrapper over the
plain Python function of the same step in ``components/``.

Components run in the project's image (``REFSEG_IMAGE``), where kfp and this package are already
installed, so nothing is installed at run time (``install_kfp_package=False``). Under ``kfp.local``
(SubprocessRunner, use_venv=False) they run in the current environment instead.

The function bodies are shipped to the executor as source, so every import sits inside them.
"""


import os
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

IMAGE = os.environ.get("REFSEG_IMAGE", "ghcr.io/bilingual-refseg/refseg:0.1.0")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def check_translations_op(
    manifest_uri: str,
    max_fail_rate: float,
    clean: Output[Dataset],
    quarantine: Output[Dataset],
    report: Output[HTML],
    validation_site: Output[Artifact],
    summary: Output[Artifact],
):
    """Great Expectations checks of every EN/ZH pair; clean manifest + quarantine + report."""
    import os
    import shutil
    import tempfile

    from components.check_translations import check_translations

    out = tempfile.mkdtemp(prefix="check-")
    result = check_translations(manifest_uri, out, max_fail_rate=max_fail_rate)
    shutil.copyfile(os.path.join(out, "clean.parquet"), clean.path)
    shutil.copyfile(os.path.join(out, "quarantine.parquet"), quarantine.path)
    shutil.copyfile(os.path.join(out, "summary.json"), summary.path)
    shutil.copytree(out, validation_site.path)
    shutil.copyfile(result["report"], report.path)
    for key in ("rows_in", "rows_clean", "rows_quarantined"):
        if key in result:
            clean.metadata[key] = result[key]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def tokenize_op(
    clean: Input[Dataset],
    zh_vectors: str,
    en_vectors: str,
    seed: int,
    data: Output[Dataset],
):
    """jieba / English tokens, vocabularies, word vectors, encoded shards."""
    from components.tokenize import tokenize

    summary = tokenize(
        clean.path,
        data.path,
        zh_vectors=zh_vectors or None,
        en_vectors=en_vectors or None,
        seed=seed,
    )
    data.metadata["vocab"] = {k: v for k, v in summary.get("vocab_size", {}).items()}


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_op(
    data: Input[Dataset],
    lang: str,
    preset: str,
    steps: int,
    seed: int,
    mlflow_uri: str,
    model: Output[Model],
) -> str:
    """Train one language's model; returns the MLflow run id."""
    import os

    if mlflow_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_uri
    from components.train import train

    summary = train(data.path, lang, config=preset, out_dir=model.path,
                    steps=steps or None, seed=seed, quiet=True)
    model.metadata["run_id"] = summary["run_id"]
    model.metadata["lang"] = lang
    model.metadata["best_val_overall_iou"] = summary.get("best_val_overall_iou")
    return summary["run_id"]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_op(
    model: Input[Model],
    data: Input[Dataset],
    split: str,
    crf: bool,
    run_id: str,
    mlflow_uri: str,
    metrics: Output[Metrics],
    report: Output[HTML],
    per_sample: Output[Dataset],
):
    """IoU and Precision@X with and without DenseCRF; metrics shown by the KFP UI."""
    import math
    import os
    import shutil
    import tempfile

    if mlflow_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_uri
    from components.evaluate import evaluate

    out = tempfile.mkdtemp(prefix="eval-")
    result = evaluate(
        os.path.join(model.path, "checkpoints", "best.pt"), data.path, split=split, crf=crf,
        out_dir=out, run_id=run_id,
    )
    for name, value in result["metrics"].items():
        if isinstance(value, (int, float)) and not math.isnan(value):
            metrics.log_metric(name, float(value))
    shutil.copyfile(os.path.join(out, "report.html"), report.path)
    shutil.copyfile(os.path.join(out, "per_sample.parquet"), per_sample.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register_op(
    run_id: str,
    margin: float,
    floor: float,
    mlflow_uri: str,
    pipeline_run: str,
) -> NamedTuple("Registration", [("name", str), ("version", str), ("status", str),
                                 ("champion", bool), ("reason", str)]):
    """Register the run's model and move the ``champion`` alias when it wins the gate.

    A refused model (NaN gate metric) is not an error of the pipeline: the step reports it."""
    import os
    from collections import namedtuple

    if mlflow_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_uri
    from components.register import register

    r = register(run_id, margin=margin, floor=floor, pipeline_run=pipeline_run)
    print(f"[register] {r['name']} v{r['version']}: {r['status']} ({r['reason']})", flush=True)
    out = namedtuple("Registration", ["name", "version", "status", "champion", "reason"])
    version = "" if r["version"] is None else str(r["version"])
    return out(r["name"], version, str(r["status"]), bool(r["champion"]), str(r["reason"] or ""))
