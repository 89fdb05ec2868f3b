"""The evaluate step: overall IoU, mean IoU and Precision@X of a checkpoint on one split, before
and after DenseCRF, a shuffled-expression sanity row, an HTML report, and MLflow logging.

:func:`evaluate` tells the story over :class:`EvaluateOptions`; the pieces live in
:mod:`components.evaluation`:

- :mod:`~components.evaluation.inputs`: the checkpoint, its language, and the checks that the
  tokenize folder (vocabulary, split) belongs to it;
- :mod:`~components.evaluation.evaluator`: the prediction loop (one forward pass per batch of
  images with all their expressions, masks scored at the original resolution, DenseCRF of
  :mod:`~components.evaluation.crf` in worker processes meanwhile);
- :mod:`~components.evaluation.sanity`: the shuffled-expression row (does the model use the
  language?);
- :mod:`~components.evaluation.metrics`: IoU, overall IoU, mean IoU, P@X;
- :mod:`~components.evaluation.examples` and :mod:`~components.evaluation.report`: the best and
  worst examples with their attention maps, and the self-contained HTML report;
- :mod:`~components.evaluation.outputs`: ``metrics.json`` and ``per_sample.parquet``;
- :mod:`~components.evaluation.tracking`: the metrics and files on the training run in MLflow.

Metric names (docs/evaluation.md): ``{split}_overall_iou``, ``{split}_mean_iou``,
``{split}_prec_50`` ... ``{split}_prec_90``, the same with ``_crf``, and
``{split}_overall_iou_shuffled``.
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
from components.evaluation.evaluator import Evaluator, Timings
from components.evaluation.outputs import (
    FILES,
    METRICS_FILE,
    PER_SAMPLE_FILE,
    REPORT_FILE,
    crf_summary,
    metrics_document,
    per_sample_frame,
    write_json,
)
from components.evaluation.sanity import DEFAULT_MARGIN as DEFAULT_SANITY_MARGIN
from components.evaluation.sanity import sanity_row
from components.evaluation.tracking import log_to_mlflow, resolve_run_id
from components.logs import get_logger, progress_enabled
from components.text.tokenized import TokenizedData
from components.text.tokenizer import LANGS


@dataclass
class EvaluateOptions:
    """What ``refseg evaluate`` (and the pipeline's evaluate step) is asked to do."""

    checkpoint: str  # train OUT/checkpoints/best.pt, local or s3://
    data_dir: str  # the tokenize output folder
    split: str = "val"
    crf: bool = True  # also score the DenseCRF-refined masks
    out_dir: str = "eval_out"  # metrics.json, per_sample.parquet, report.html; local or s3://
    run_id: str | None = None  # MLflow run to log to; default the train OUT's run_id.txt
    crf_mode: str = "full"  # "full" image or "crop" around the prediction
    workers: int | None = None  # CRF worker processes; default all available cores
    max_samples: int | None = None  # the first N expressions only (images sorted by id)
    seed: int = 0  # of the shuffled-expression row
    lang: str | None = None  # default the checkpoint's
    batch_images: int = 8  # images per forward pass
    device: str | None = None  # default cuda when present
    sanity_margin: float = DEFAULT_SANITY_MARGIN  # relative drop the shuffled row must exceed
    crf_params: CRFParams | None = None  # default CRFParams() (its mode: crf_mode)
    n_examples: int = 4  # best and worst examples in the report, each
    report: bool = True  # write report.html
    log_mlflow: bool = True  # log to the training run when a run id is known

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

    def crf_settings(self) -> CRFParams:
        return (self.crf_params or CRFParams()).replace(mode=self.crf_mode)


def evaluate(checkpoint: str | EvaluateOptions, data_dir: str | None = None,
             **options: Any) -> dict[str, Any]:
    """Evaluate the checkpoint on a split of the tokenized data; write metrics.json,
    per_sample.parquet and report.html to ``out_dir``; log to MLflow when a run id is known.
    ``evaluate(checkpoint, data_dir, split=..., ...)`` takes :class:`EvaluateOptions`' fields as
    keywords. Returns the metrics.json document."""
    opts = (checkpoint if isinstance(checkpoint, EvaluateOptions)
            else EvaluateOptions(checkpoint, data_dir, **options))
    params, split, timings, t_start = opts.crf_settings(), opts.split, Timings(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="refseg-eval-") as work, \
            storage.staged_output(opts.out_dir, prefix="refseg-eval-") as out:
        # ---- load the checkpoint and the data, and check that they belong together -----------
        with timings.measure("load_s"):
            cache = os.path.join(work, "cache")
            model, cfg, extra = inputs.load_model(opts.checkpoint, cache)
            lang = inputs.language(opts.lang, extra, opts.checkpoint)
            data = TokenizedData(opts.data_dir)
            inputs.check_vocabulary(data, lang, model.vocab_size, opts.checkpoint)
            inputs.check_split(data, lang, split)
            texts = inputs.expressions(data, lang)
            from model.geometry import InputFit

            ds = RefDataset(opts.data_dir, lang, split, cfg.input_size, cache_dir=cache,
                            fit=InputFit.of(cfg))
            model, dev = inputs.to_device(model, opts.device)
        if len(ds) == 0:
            raise InputError(f"split {split!r} of {opts.data_dir} has no samples for language "
                             f"{lang!r}")
        log = get_logger("evaluate", lang)
        log.info("%s: %d images, checkpoint step %s, on %s, CRF %s", split, len(ds),
                 extra.get("step"), dev, opts.crf_mode if opts.crf else "off")

        # ---- predict; DenseCRF in worker processes meanwhile ---------------------------------
        with contextlib.ExitStack() as stack:
            pool = stack.enter_context(CRFPool(params, opts.workers)) if opts.crf else None
            workers = pool.workers if pool is not None else 0
            bar = stack.enter_context(_progress_bar(log, len(ds), f"evaluate {split}/{lang}"))
            pred = Evaluator(model, ds, {s: e["ann_id"] for s, e in texts.items()}, params, pool,
                             timings, seed=opts.seed, batch_images=opts.batch_images,
                             max_samples=opts.max_samples, lang=lang).run(bar)
        t_pred_end = time.perf_counter()

        # ---- metrics, the sanity row, the per-sample table -----------------------------------
        metrics = pred.metrics(split, crf=opts.crf)
        sanity = sanity_row(pred.rows, pred.shuffled, pred.sanity_counts, opts.sanity_margin)
        if sanity["n_samples"]:
            metrics[f"{split}_overall_iou_shuffled"] = sanity["overall_iou_shuffled"]
        (log.warning if sanity["uses_language"] is False else log.info)(sanity["message"])
        per_sample = per_sample_frame(pred, with_crf=opts.crf)
        with timings.measure("write_s"):
            per_sample.to_parquet(os.path.join(out, PER_SAMPLE_FILE), index=False)

        # ---- examples for the report (a second, small pass with attention maps) --------------
        examples = []
        if opts.report and opts.n_examples > 0:
            from components.evaluation.examples import collect_examples

            with timings.measure("examples_s"):
                examples = collect_examples(model, ds, pred.positions, texts, per_sample,
                                            opts.n_examples, params, crf_enabled=opts.crf)

        # ---- metrics.json, report.html, MLflow -----------------------------------------------
        rid, rid_source = (resolve_run_id(opts.checkpoint, opts.run_id) if opts.log_mlflow
                           else (None, "disabled"))
        doc = metrics_document(
            opts, lang=lang, device=str(dev), n_images=int(per_sample["image_id"].nunique()),
            n_samples=len(pred.rows), metrics=metrics, sanity=sanity,
            crf=crf_summary(opts.crf, opts.crf_mode, params, workers, pred, timings),
            timings={**timings.rounded(), "predict_wall_s": round(t_pred_end - t_start, 4)},
            config_name=cfg.name, extra=extra, run_id=rid, run_id_source=rid_source)
        if opts.report:
            from components.evaluation.report import write_report

            t = time.perf_counter()
            write_report(os.path.join(out, REPORT_FILE), doc, per_sample, examples)
            doc["timings"]["report_s"] = round(time.perf_counter() - t, 4)
        doc["timings"]["total_s"] = round(time.perf_counter() - t_start, 4)
        write_json(os.path.join(out, METRICS_FILE), doc)
        if rid:
            log_to_mlflow(rid, doc, out, split, FILES)
            doc["mlflow"]["logged"] = True
            write_json(os.path.join(out, METRICS_FILE), doc)
            log.info("logged to MLflow run %s", rid)
    return doc


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
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
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
        args.checkpoint, args.data, split=args.split, crf=args.crf, out_dir=args.out,
        run_id=args.run_id, crf_mode=args.crf_mode, workers=args.workers,
        max_samples=args.max_samples, seed=args.seed, lang=args.lang,
        batch_images=args.batch_images, device=args.device, sanity_margin=args.sanity_margin,
        report=not args.no_report, log_mlflow=not args.no_mlflow))
    m, s = doc["metrics"], doc["split"]
    line = (f"{s}/{doc['lang']}: {doc['n_samples']} samples, overall IoU "
            f"{m[f'{s}_overall_iou']:.4f}, mean IoU {m[f'{s}_mean_iou']:.4f}, "
            f"P@0.5 {m[f'{s}_prec_50']:.4f}")
    if f"{s}_overall_iou_crf" in m:
        line += f"; with CRF {m[f'{s}_overall_iou_crf']:.4f}"
    print(line)
    print(f"wrote {storage.join(args.out, METRICS_FILE)}")
    return 0
