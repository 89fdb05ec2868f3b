"""The evaluate step: overall IoU, mean IoU and Precision@X of a checkpoint on every split of the
data (one model load, one forward pass per image), before and after DenseCRF, the pooled gate
split, a shuffled-expression sanity row, the results table, an HTML report, and MLflow logging.

:func:`evaluate` tells the story over :class:`EvaluateOptions`; the pieces live in
:mod:`components.evaluation`:

- :mod:`~components.evaluation.inputs`: the checkpoint, its language, and the checks that the
  tokenize folder (vocabulary, splits) belongs to it;
- :mod:`~components.evaluation.splits`: which splits are evaluated (default: all but train) and
  which gate the promotion (default: all evaluated but the checkpoint's selection split, pooled);
- :mod:`~components.evaluation.evaluator`: the prediction loop (one forward pass per batch of
  images with all their expressions, masks scored at the original resolution, DenseCRF of
  :mod:`~components.evaluation.crf` in worker processes meanwhile; one pool for every split);
- :mod:`~components.evaluation.pooling`: the gate's pooled metrics, the per-sample table;
- :mod:`~components.evaluation.sanity`: the shuffled-expression row (does the model use the
  language?);
- :mod:`~components.evaluation.metrics`: IoU, overall IoU, mean IoU, P@X;
- :mod:`~components.evaluation.results`: the results table (the paper's Tables 2/3 shape);
- :mod:`~components.evaluation.examples` and :mod:`~components.evaluation.report`: the best and
  worst examples with their attention maps, and the self-contained HTML report;
- :mod:`~components.evaluation.outputs`: ``metrics.json`` and ``per_sample.parquet``;
- :mod:`~components.evaluation.tracking`: the metrics, tags and files on the training run.

Metric names (docs/evaluation.md): per split ``{split}_overall_iou``, ``{split}_mean_iou``,
``{split}_prec_50`` ... ``{split}_prec_90``, the same with ``_crf``, and
``{split}_overall_iou_shuffled``; the gate's pooled ``gate_overall_iou`` ... the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from components.data import storage
from components.data.refdata import RefDataset
from components.errors import ConfigError, InputError
from components.evaluation import inputs
from components.evaluation.crf import MODES as CRF_MODES
from components.evaluation.crf import CRFParams, CRFPool
from components.evaluation.evaluator import Evaluator, Predictions, Timings
from components.evaluation.outputs import (
    FILES,
    METRICS_FILE,
    PER_SAMPLE_FILE,
    REPORT_FILE,
    crf_summary,
    metrics_document,
    write_json,
)
from components.evaluation.pooling import gate_metrics, per_sample_table, pool
from components.evaluation.results import RESULTS_FILE, results_row
from components.evaluation.sanity import DEFAULT_MARGIN as DEFAULT_SANITY_MARGIN
from components.evaluation.sanity import sanity_row
from components.evaluation.splits import (
    evaluated_splits,
    gate_name,
    parse_gate,
    parse_splits,
    resolve_gate,
)
from components.evaluation.tracking import log_to_mlflow, resolve_run_id
from components.logs import get_logger, progress_enabled
from components.text.tokenized import TokenizedData
from components.text.tokenizer import LANGS
from model.geometry import InputFit

DEFAULT_SELECT_SPLIT = "val"  # checkpoints written before select_split was stored chose on val


@dataclass
class EvaluateOptions:
    """What ``refseg evaluate`` (and the pipeline's evaluate step) is asked to do."""

    checkpoint: str  # train OUT/checkpoints/best.pt, local or s3://
    data_dir: str  # the tokenize output folder
    split: str | None = None  # one split (older callers); joins ``splits``
    crf: bool = True  # also score the DenseCRF-refined masks
    out_dir: str = "eval_out"  # metrics.json, per_sample.parquet, results.json, report.html
    run_id: str | None = None  # MLflow run to log to; default the train OUT's run_id.txt
    crf_mode: str = "full"  # "full" image or "crop" around the prediction
    workers: int | None = None  # CRF worker processes; default all available cores
    max_samples: int | None = None  # the first N expressions of each split (images sorted by id)
    seed: int = 0  # of the shuffled-expression row
    lang: str | None = None  # default the checkpoint's
    batch_images: int = 8  # images per forward pass
    device: str | None = None  # default cuda when present
    sanity_margin: float = DEFAULT_SANITY_MARGIN  # relative drop the shuffled row must exceed
    crf_params: CRFParams | None = None  # default CRFParams() (its mode: crf_mode)
    n_examples: int = 4  # best and worst examples in the report, each
    report: bool = True  # write report.html
    log_mlflow: bool = True  # log to the training run when a run id is known
    splits: list[str] | str | None = None  # "val,testA" or a list; None/"" = all but train
    gate_split: str | None = None  # "testA+testB"; None/"" = all evaluated but the selection
    allow_gate_on_select_split: bool = False  # accept a gate that includes the selection split

    def __post_init__(self) -> None:
        if self.crf_mode not in CRF_MODES:
            raise ConfigError(f"crf_mode {self.crf_mode!r} not in {CRF_MODES}")
        if self.batch_images < 1:
            raise ConfigError(f"batch_images must be >= 1, got {self.batch_images}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max_samples must be >= 1, got {self.max_samples}")
        if not 0 <= self.sanity_margin < 1:
            raise ConfigError(f"sanity_margin must lie in [0, 1), got {self.sanity_margin}")
        if not self.checkpoint or not self.data_dir:
            raise ConfigError("evaluate needs a checkpoint and a data dir (the tokenize output)")
        self.checkpoint, self.data_dir, self.out_dir = (
            str(self.checkpoint), str(self.data_dir), str(self.out_dir))
        self.splits = list(dict.fromkeys(parse_splits(self.splits) + parse_splits(self.split)))
        parse_gate(self.gate_split)  # a malformed gate is refused before anything is read

    def crf_settings(self) -> CRFParams:
        return (self.crf_params or CRFParams()).replace(mode=self.crf_mode)


@dataclass
class _Loaded:
    """The checkpoint and the data, checked to belong together."""

    model: Any
    cfg: Any
    extra: dict
    lang: str
    device: Any
    texts: dict[str, dict]
    datasets: dict[str, RefDataset]  # by split, in evaluation order
    select_split: str
    gate: list[str]


def _load(opts: EvaluateOptions, cache: str) -> _Loaded:
    """Load the checkpoint and the data, check them, resolve the splits and the gate."""
    model, cfg, extra = inputs.load_model(opts.checkpoint, cache)
    lang = inputs.language(opts.lang, extra, opts.checkpoint)
    data = TokenizedData.checked(opts.data_dir)  # its completion marker vouches for it
    inputs.check_vocabulary(data, lang, model.vocab_size, opts.checkpoint, extra)
    for s in opts.splits:
        inputs.check_split(data, lang, s)
    splits = evaluated_splits(opts.splits, data.splits(lang))
    select = str(extra.get("select_split") or DEFAULT_SELECT_SPLIT)
    gate = resolve_gate(opts.gate_split, splits, select,
                        allow_select=opts.allow_gate_on_select_split,
                        narrowed=bool(opts.splits), warn=get_logger("evaluate", lang).warning)
    texts = inputs.expressions(data, lang)
    fit = InputFit.of(cfg)  # stretch or pad, as the checkpoint was trained
    datasets = {s: RefDataset(opts.data_dir, lang, s, cfg.input_size, cache_dir=cache, fit=fit)
                for s in splits}
    for s, ds in datasets.items():
        if len(ds) == 0:
            raise InputError(f"split {s!r} of {opts.data_dir} has no samples for language "
                             f"{lang!r}")
    model, dev = inputs.to_device(model, opts.device)
    return _Loaded(model, cfg, extra, lang, dev, texts, datasets, select, gate)


def _predict(opts: EvaluateOptions, ld: _Loaded, params: CRFParams, timings: Timings, log
             ) -> tuple[dict[str, Predictions], int, dict[str, float]]:
    """Every split through the model (one CRF pool for all). Returns (predictions by split, CRF
    workers, seconds by split)."""
    preds: dict[str, Predictions] = {}
    seconds: dict[str, float] = {}
    ann_ids = {s: e["ann_id"] for s, e in ld.texts.items()}
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(CRFPool(params, opts.workers)) if opts.crf else None
        workers = pool.workers if pool is not None else 0
        for split, ds in ld.datasets.items():
            t = time.perf_counter()
            with _progress_bar(log, len(ds), f"evaluate {split}/{ld.lang}") as bar:
                preds[split] = Evaluator(
                    ld.model, ds, ann_ids, params, pool, timings, seed=opts.seed,
                    batch_images=opts.batch_images, max_samples=opts.max_samples,
                    lang=ld.lang).run(bar)
            seconds[split] = round(time.perf_counter() - t, 4)
    return preds, workers, seconds


def _score(opts: EvaluateOptions, preds: dict[str, Predictions], gate: list[str], log
           ) -> tuple[dict[str, float], dict[str, dict], dict[str, Any]]:
    """(metrics, sanity row by split, the sanity row over every split)."""
    metrics: dict[str, float] = {}
    by_split: dict[str, dict] = {}
    for split, p in preds.items():
        metrics.update(p.metrics(split, crf=opts.crf))
        by_split[split] = sanity_row(p.rows, p.shuffled, p.sanity_counts, opts.sanity_margin)
        if by_split[split]["n_samples"]:
            metrics[f"{split}_overall_iou_shuffled"] = by_split[split]["overall_iou_shuffled"]
    metrics.update(gate_metrics(preds, gate, opts.crf))
    everything = pool(list(preds.values()))
    sanity = sanity_row(everything.rows, everything.shuffled, everything.sanity_counts,
                        opts.sanity_margin)
    (log.warning if sanity["uses_language"] is False else log.info)(sanity["message"])
    return metrics, by_split, sanity


def evaluate(checkpoint: str | EvaluateOptions, data_dir: str | None = None,
             **options: Any) -> dict[str, Any]:
    """Evaluate the checkpoint on the splits of the tokenized data; write metrics.json,
    per_sample.parquet, results.json and report.html to ``out_dir``; log to MLflow when a run
    id is known. ``evaluate(checkpoint, data_dir, splits=..., ...)`` takes
    :class:`EvaluateOptions`' fields as keywords. Returns the metrics.json document."""
    opts = (checkpoint if isinstance(checkpoint, EvaluateOptions)
            else EvaluateOptions(checkpoint, data_dir, **options))
    params, timings, t_start = opts.crf_settings(), Timings(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="refseg-eval-") as work, \
            storage.staged_output(opts.out_dir, prefix="refseg-eval-", step="evaluate") as out:
        with timings.measure("load_s"):
            ld = _load(opts, os.path.join(work, "cache"))
        log = get_logger("evaluate", ld.lang)
        log.info("%s: %s images, checkpoint step %s (selected on %s), gate %s, on %s, CRF %s",
                 "+".join(ld.datasets), "+".join(str(len(d)) for d in ld.datasets.values()),
                 ld.extra.get("step"), ld.select_split, gate_name(ld.gate) or "none", ld.device,
                 opts.crf_mode if opts.crf else "off")
        preds, workers, split_seconds = _predict(opts, ld, params, timings, log)
        t_pred_end = time.perf_counter()
        metrics, sanity_by_split, sanity = _score(opts, preds, ld.gate, log)
        per_sample = per_sample_table(preds, with_crf=opts.crf)
        with timings.measure("write_s"):
            per_sample.to_parquet(os.path.join(out, PER_SAMPLE_FILE), index=False)
        examples = _examples(opts, ld, preds, per_sample, params, timings)
        rid, rid_source = (resolve_run_id(opts.checkpoint, opts.run_id) if opts.log_mlflow
                           else (None, "disabled"))
        n_samples = {s: len(p.rows) for s, p in preds.items()}
        doc = metrics_document(
            opts, lang=ld.lang, device=str(ld.device),
            n_images=int(per_sample[["split", "image_id"]].drop_duplicates().shape[0]),
            n_samples=len(per_sample), metrics=metrics, sanity=sanity,
            crf=crf_summary(opts.crf, opts.crf_mode, params, workers,
                            pool(list(preds.values())), timings),
            timings={**timings.rounded(), "predict_wall_s": round(t_pred_end - t_start, 4)},
            config_name=ld.cfg.name, extra=ld.extra, run_id=rid, run_id_source=rid_source)
        doc.update(_split_entries(preds, per_sample, sanity_by_split, split_seconds, ld))
        doc["results"] = results_row(
            dataset=inputs.dataset_name(ld.texts, per_sample["sample_id"]), lang=ld.lang,
            metrics=metrics, n_samples=n_samples, gate_split=doc["gate_split"] or "",
            select_split=ld.select_split)
        write_json(os.path.join(out, RESULTS_FILE), doc["results"])
        _write(opts, out, doc, per_sample, examples, t_start, rid, log)
    return doc


def _examples(opts, ld: _Loaded, preds, per_sample, params, timings) -> list[dict[str, Any]]:
    """The report's best and worst examples over every split (a second, small pass with
    attention maps)."""
    if not (opts.report and opts.n_examples > 0):
        return []
    from components.evaluation.examples import collect_examples_by_split

    with timings.measure("examples_s"):
        return collect_examples_by_split(
            ld.model, ld.datasets, {s: p.positions for s, p in preds.items()}, ld.texts,
            per_sample, opts.n_examples, params, crf_enabled=opts.crf)


def _split_entries(preds, per_sample, sanity_by_split, split_seconds, ld: _Loaded
                   ) -> dict[str, Any]:
    """metrics.json's ``splits``, ``select_split``, ``gate_split`` and ``per_split``."""
    per_split = {}
    for s, p in preds.items():
        rows = per_sample[per_sample["split"] == s]
        entry = {"n_samples": len(p.rows), "n_images": int(rows["image_id"].nunique()),
                 "seconds": split_seconds[s], "sanity": sanity_by_split[s]}
        if p.crf_seconds:
            per_image = rows.groupby("image_id")["crf_seconds"].sum()
            entry["crf_seconds_per_image"] = round(float(per_image.mean()), 5)
        per_split[s] = entry
    return {"split": "+".join(preds), "splits": list(preds), "select_split": ld.select_split,
            "gate_split": gate_name(ld.gate) or None, "per_split": per_split}


def _write(opts, out: str, doc: dict, per_sample, examples, t_start: float, rid, log) -> None:
    """report.html, metrics.json, and the logging to MLflow."""
    if opts.report:
        from components.evaluation.report import write_report

        t = time.perf_counter()
        write_report(os.path.join(out, REPORT_FILE), doc, per_sample, examples)
        doc["timings"]["report_s"] = round(time.perf_counter() - t, 4)
    doc["timings"]["total_s"] = round(time.perf_counter() - t_start, 4)
    write_json(os.path.join(out, METRICS_FILE), doc)
    if rid:
        log_to_mlflow(rid, doc, out, FILES)
        doc["mlflow"]["logged"] = True
        write_json(os.path.join(out, METRICS_FILE), doc)
        log.info("logged to MLflow run %s", rid)


@contextlib.contextmanager
def _progress_bar(log, total: int, desc: str):
    """A tqdm bar over images when the step's progress is shown, else None."""
    if not progress_enabled(log):
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="img", file=sys.stderr) as bar:
        yield bar


# ------------------------------------------------------------------------------------------------
# CLI: refseg evaluate
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="model checkpoint (train OUT/checkpoints/"
                   "best.pt), local or s3://")
    p.add_argument("--data", required=True, help="tokenize output folder (the data dir)")
    p.add_argument("--split", "--splits", dest="splits", action="append", default=None,
                   help="split(s) to evaluate, repeatable or comma-separated (default: every "
                        "split of the data but train)")
    p.add_argument("--gate-split", default=None, help="the split(s) the promotion gate is "
                   "measured on, pooled, joined with '+' (default: every evaluated split but the "
                   "checkpoint's selection split, e.g. testA+testB)")
    p.add_argument("--allow-gate-on-select-split", action="store_true", help="accept a gate "
                   "split that includes the selection split (optimistic; a warning)")
    p.add_argument("--out", required=True, help="output folder for metrics.json, "
                   "per_sample.parquet, report.html")
    p.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True,
                   help="also score the DenseCRF-refined masks (default: on)")
    p.add_argument("--crf-mode", choices=CRF_MODES, default="full",
                   help="DenseCRF on the whole image or on a crop around the prediction")
    p.add_argument("--run-id", default=None, help="MLflow run to log to (default: the "
                   "checkpoint's <dir>/../run_id.txt when present)")
    p.add_argument("--workers", type=int, default=None,
                   help="CRF worker processes (default: all available cores)")
    p.add_argument("--max-samples", type=int, default=None, help="evaluate only the first N "
                   "expressions (in dataset order: images sorted by id)")
    p.add_argument("--lang", choices=sorted(LANGS), default=None,
                   help="language (default: the checkpoint's)")
    p.add_argument("--batch-images", type=int, default=8, help="images per forward pass")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffled-expression check")
    p.add_argument("--sanity-margin", type=float, default=DEFAULT_SANITY_MARGIN,
                   help="relative IoU drop the shuffled row must exceed (default 0.10)")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow even when a "
                   "run id is known")


def run(args) -> int:
    doc = evaluate(EvaluateOptions(
        args.checkpoint, args.data, splits=args.splits, crf=args.crf, out_dir=args.out,
        run_id=args.run_id, crf_mode=args.crf_mode, workers=args.workers,
        max_samples=args.max_samples, seed=args.seed, lang=args.lang,
        batch_images=args.batch_images, device=args.device, sanity_margin=args.sanity_margin,
        report=not args.no_report, log_mlflow=not args.no_mlflow, gate_split=args.gate_split,
        allow_gate_on_select_split=args.allow_gate_on_select_split))
    m = doc["metrics"]
    names = list(doc["splits"]) + (["gate"] if doc["gate_split"] else [])
    for s in names:
        n = doc["per_split"][s]["n_samples"] if s != "gate" else doc["results"]["gate"][
            "n_samples"]
        label = f"gate ({doc['gate_split']})" if s == "gate" else s
        line = (f"{label}/{doc['lang']}: {n} samples, overall IoU {m[f'{s}_overall_iou']:.4f}, "
                f"mean IoU {m[f'{s}_mean_iou']:.4f}, P@0.5 {m[f'{s}_prec_50']:.4f}")
        if f"{s}_overall_iou_crf" in m:
            line += f"; with CRF {m[f'{s}_overall_iou_crf']:.4f}"
        print(line)
    print(f"selected on {doc['select_split']}; wrote {storage.join(args.out, METRICS_FILE)}")
    return 0
