"""Kubeflow components: one thin ``@dsl.component`` per pipeline step, each a wrapper over the
plain Python function of the same step in ``components/``.

Components run in the project's image (``REFSEG_IMAGE``), where kfp and this package are already
installed, so nothing is installed at run time (``install_kfp_package=False``). Under ``kfp.local``
(SubprocessRunner, use_venv=False) they run in the current environment instead.

The function bodies are shipped to the executor as source, so every import sits inside them.
Each step configures the ``refseg`` loggers first, so its progress lines (``[train zh] ...``)
reach the task's log. Knobs keep one name from the CLI flag to the pipeline parameter to the
component to the function (``config``, ``steps``, ``splits``, ``gate_split``, ``margin``, ``floor``,
``tracking_uri``, ...).
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
    image_roots: str = "",
):
    """Great Expectations checks of every EN/ZH pair, and of every image once.

    Inputs: manifest_uri (bilingual manifest, local or s3://), max_fail_rate (the gate),
    image_roots (comma-separated local folders and s3:// prefixes the images must lie in;
    "" = the manifest's folder and any s3:// object).
    Outputs: clean (manifest of rows that pass), quarantine (refused rows with reasons),
    report (HTML), validation_site (the Data Docs site), summary (JSON counts)."""
    import os
    import shutil
    import tempfile

    from components import logs
    from components.check_translations import check_translations

    logs.configure()
    out = tempfile.mkdtemp(prefix="check-")
    try:
        roots = [r.strip() for r in image_roots.split(",") if r.strip()]
        result = check_translations(manifest_uri, out, max_fail_rate=max_fail_rate,
                                    image_roots=roots or None)
        shutil.copyfile(os.path.join(out, "clean.parquet"), clean.path)
        shutil.copyfile(os.path.join(out, "quarantine.parquet"), quarantine.path)
        shutil.copyfile(os.path.join(out, "summary.json"), summary.path)
        shutil.copytree(out, validation_site.path)
        shutil.copyfile(result["report"], report.path)
    finally:
        shutil.rmtree(out, ignore_errors=True)
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
    """jieba / English tokens, vocabularies, word vectors, encoded shards.

    Inputs: clean (manifest), zh_vectors / en_vectors (optional word-vector files), seed.
    Outputs: data (the tokenize folder: manifest, vocabularies, embeddings, shards)."""
    from components import logs
    from components.tokenize import tokenize

    logs.configure()
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
    config: str,
    steps: int,
    seed: int,
    tracking_uri: str,
    model: Output[Model],
    parent_run_id: str = "",
    resume_root: str = "",
    pipeline_root: str = "",
    pipeline_run: str = "",
) -> str:
    """Train one language's model; a retry of the task resumes where the last attempt saved.

    Inputs: data (tokenize folder), lang, config (preset name or YAML), steps (0 = the config's),
    seed, tracking_uri (MLflow; empty = the environment's), parent_run_id (an MLflow run to nest
    the training run under, tag ``mlflow.parentRunId``; empty = none), resume_root (s3:// prefix
    or shared folder for the resumable state; empty = pipeline_root when the step can write there),
    pipeline_root and pipeline_run (the DAG passes ``dsl.PIPELINE_ROOT_PLACEHOLDER`` and
    ``dsl.PIPELINE_JOB_ID_PLACEHOLDER``): the state goes to
    ``<root>/train-resume/<pipeline_run>/<lang>-<config>-s<seed>``, which every retry of this
    task finds (the model artifact is pod-local until the task ends).
    Outputs: model (checkpoints, tokenizer, summary); returns the MLflow run id."""
    import os

    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from components import logs
    from components.train import task_resume_uri, train_task

    logs.configure()
    resume_uri = task_resume_uri(resume_root, pipeline_root, pipeline_run, lang, config, seed)
    summary = train_task(data.path, lang, model.path, resume_uri=resume_uri, config=config,
                         steps=steps or None, seed=seed, parent_run_id=parent_run_id or None)
    model.metadata["run_id"] = summary["run_id"]
    model.metadata["lang"] = lang
    model.metadata["best_val_overall_iou"] = summary.get("best_val_overall_iou")
    model.metadata["resumed_from_step"] = summary.get("resumed_from_step", 0)
    return summary["run_id"]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_op(
    model: Input[Model],
    data: Input[Dataset],
    lang: str,
    splits: str,
    gate_split: str,
    crf: bool,
    run_id: str,
    tracking_uri: str,
    metrics: Output[Metrics],
    report: Output[HTML],
    per_sample: Output[Dataset],
) -> str:
    """IoU and Precision@X with and without DenseCRF on every split; metrics shown by the KFP UI.

    Inputs: model (train output), data (tokenize folder), lang, splits (comma-separated; empty =
    every split but train), gate_split (splits joined with '+'; empty = every evaluated split but
    the selection split), crf, run_id (the training run the metrics are logged to), tracking_uri.
    Outputs: metrics, report (HTML), per_sample (Parquet); returns a JSON summary (lang, splits,
    gate_split, select_split, metrics, the results-table row, report and per_sample URIs, and
    train: the training run's config, seed and run id) for the pipeline's results step."""
    import json
    import math
    import os
    import shutil
    import tempfile

    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from components import logs
    from components.evaluate import evaluate

    logs.configure()
    from components.training.layout import TrainOutput

    with open(TrainOutput(model.path).summary, encoding="utf-8") as fh:
        trained = json.load(fh)
    out = tempfile.mkdtemp(prefix="eval-")
    try:
        result = evaluate(str(TrainOutput(model.path).best), data.path, splits=splits or None,
                          gate_split=gate_split or None, crf=crf, out_dir=out, run_id=run_id)
        shutil.copyfile(os.path.join(out, "report.html"), report.path)
        shutil.copyfile(os.path.join(out, "per_sample.parquet"), per_sample.path)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    finite = {k: float(v) for k, v in result["metrics"].items()
              if isinstance(v, (int, float)) and not math.isnan(v)}
    for name, value in finite.items():
        metrics.log_metric(name, value)
    return json.dumps({"lang": lang, "splits": result["splits"],
                       "gate_split": result["gate_split"], "select_split": result["select_split"],
                       "metrics": finite, "results": result["results"], "report": report.uri,
                       "per_sample": per_sample.uri,
                       "train": {"config": trained.get("config"), "seed": trained.get("seed"),
                                 "run_id": run_id}})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register_op(
    run_id: str,
    lang: str,
    margin: float,
    floor: float,
    tracking_uri: str,
    pipeline_run: str,
) -> NamedTuple("Registration", [("name", str), ("version", str), ("status", str),
                                 ("champion", bool), ("reason", str), ("result", str)]):
    """Register the run's model and move the ``champion`` alias when it wins the gate.

    The gate metric is register's default, ``gate_overall_iou_crf``: the evaluate step's pooled
    gate split (never the selection split); the version's tags ``refseg.gate_split`` and
    ``refseg.select_split`` say which split gated and which selected.
    Inputs: run_id (training run), lang (of that run, echoed in result), margin and floor (the
    promotion gate), tracking_uri, pipeline_run (recorded on the version). Outputs: name,
    version, status, champion, reason, and result (the same with gate_metric and gate_value, as
    one JSON object). A refused model (NaN gate metric) is not an error of the pipeline: the
    step reports it."""
    import json
    import os
    from collections import namedtuple

    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from components import logs
    from components.register import register

    logs.configure()
    r = register(run_id, margin=margin, floor=floor, pipeline_run=pipeline_run)
    logs.get_logger("register").info("%s v%s: %s (%s)", r["name"], r["version"], r["status"],
                                     r["reason"])
    version = "" if r["version"] is None else str(r["version"])
    result = {"lang": lang, "name": r["name"], "version": version, "status": str(r["status"]),
              "champion": bool(r["champion"]), "reason": str(r["reason"] or ""),
              "gate_metric": str(r["gate_metric"]), "gate_value": float(r["gate_value"])}
    out = namedtuple("Registration", ["name", "version", "status", "champion", "reason",
                                      "result"])
    return out(r["name"], version, result["status"], result["champion"], result["reason"],
               json.dumps(result))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def results_op(
    check_summary: Input[Artifact],
    check_report: Input[HTML],
    evaluations: list,
    registrations: list,
    results_table: Output[HTML],
    results_json: Output[Artifact],
) -> str:
    """The run's results in one JSON object (the pipeline's output), and the results table.

    Inputs: check_summary and check_report (of the check step), evaluations and registrations
    (each language's JSON results, collected over the per-language branches).
    Outputs: results_table (one self-contained HTML page: rows dataset x language, columns the
    splits, overall IoU without and with DenseCRF, the shape of the paper's Tables 2/3) and
    results_json (the same rows as JSON).
    Returns: {"check": {...counts..., "report": URI}, "languages": {lang: {"splits",
    "gate_split", "select_split", "metrics", "evaluation_report", "per_sample",
    "registration"}}, "results": {"splits", "rows"}, "results_table": URI}."""
    import json

    from components.evaluation.results import merge_rows, page_html

    with open(check_summary.path, encoding="utf-8") as fh:
        check = json.load(fh)
    check["report"] = check_report.uri
    registered = {r["lang"]: r for r in map(json.loads, registrations)}
    languages, rows = {}, []
    for ev in map(json.loads, evaluations):
        languages[ev["lang"]] = {"splits": ev["splits"], "gate_split": ev["gate_split"],
                                 "select_split": ev["select_split"], "metrics": ev["metrics"],
                                 "evaluation_report": ev["report"],
                                 "per_sample": ev["per_sample"],
                                 "registration": registered.get(ev["lang"])}
        rows.append(ev["results"])
    table = merge_rows(rows)
    with open(results_table.path, "w", encoding="utf-8") as fh:
        fh.write(page_html(table, "refseg results: overall IoU per split"))
    with open(results_json.path, "w", encoding="utf-8") as fh:
        json.dump(table, fh, indent=2, ensure_ascii=False)
    return json.dumps({"check": check, "languages": languages, "results": table,
                       "results_table": results_table.uri}, sort_keys=True)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ablation_start_op(
    lang: str,
    preset: str,
    rows: str,
    seeds: str,
    split: str,
    steps: int,
    crf: bool,
    tracking_uri: str,
    pipeline_run: str,
) -> list:
    """Check the ablation's plan and create its MLflow parent run (``ablation-<lang>``).

    Inputs: lang, preset (the rows are applied on it), rows (comma-separated; empty = every row),
    seeds (comma-separated), split (reported split), steps, crf, tracking_uri, pipeline_run.
    Returns the (row, seed) items: [{"row", "config", "seed", "parent_run_id"}], row order."""
    import os

    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from components import logs
    from components.ablation import start

    logs.configure()
    return start(lang, preset, rows=rows, seeds=seeds, split=split, steps=steps, crf=crf,
                 tracking_uri=tracking_uri, pipeline_run=pipeline_run)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ablation_table_op(
    items: list,
    evaluations: list,
    split: str,
    crf: bool,
    steps: int,
    tracking_uri: str,
    table: Output[HTML],
    table_json: Output[Artifact],
) -> str:
    """Table 4: every row's evaluation on ``split``, mean and spread over the seeds.

    Inputs: items (the start step's plan), evaluations (every evaluate step's JSON, collected),
    split, crf, steps, tracking_uri. Outputs: table (HTML page with the bar chart), table_json.
    Logs both and the table's metrics to the parent run and ends it. Returns the table JSON
    with ``table`` and ``table_json`` (their URIs) added."""
    import json
    import os
    import shutil
    import tempfile

    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from components import logs
    from components.ablation import TABLE_HTML, TABLE_JSON, finish

    logs.configure()
    out = tempfile.mkdtemp(prefix="ablation-")
    try:
        doc = finish(items, [json.loads(e) for e in evaluations], split, crf, out,
                     tracking_uri=tracking_uri or None, meta={"steps": steps})
        shutil.copyfile(os.path.join(out, TABLE_HTML), table.path)
        shutil.copyfile(os.path.join(out, TABLE_JSON), table_json.path)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return json.dumps({**doc, "table": table.uri, "table_json": table_json.uri})
