"""The train step: one language's LE/LA/CLAF model on a tokenize output folder, tracked in MLflow.

``refseg train --data DIR --lang zh|en --config small|small3|paper|ablation/<row>|file.yaml
--out OUT [--resume-uri URI] [--steps N] [--seed S] [--set key=value ...]``; the same command
line runs one process or many under ``torchrun`` (DDP: NCCL on GPU, gloo on CPU, detected from
``WORLD_SIZE``/``RANK``/``LOCAL_RANK``).

The story (:func:`run_training`): load the run's configuration (``configs/`` + ``--set``,
components.training.config), build a :class:`~components.training.trainer.Trainer` on the data,
resume from ``OUT/resume.pt`` when there is one, fit, write the summary. The pieces live in
``components/training/``: config, trainer, distributed, state (resume file), tracking (MLflow),
schedule, validation.

Output: ``checkpoints/best.pt`` (best overall IoU on ``select_split``), ``checkpoints/last.pt``,
``resume.pt`` (the whole training state), ``tokenizer/``, ``summary.json``, ``run_id.txt``.

Faults: SIGTERM finishes the current step, writes ``resume.pt`` and exits with code 143 (the CLI;
``train()`` returns a summary with ``"interrupted": true``); running the same command with the same
OUT resumes (same MLflow run). ``resume.pt`` is also written every ``resume_every`` steps, so a
SIGKILL loses at most that many steps. OUT is local to the machine: with ``--resume-uri`` (a local
folder on a shared volume, or an s3:// prefix) every saved state is also uploaded there, and a run
started on another machine with the same URI (a retried pipeline task in a fresh pod) downloads
it and resumes; a state of another language, vocabulary, data folder or configuration is
refused. A non-finite loss or gradient norm raises ``NonFiniteLossError`` before the optimiser
step, so no bad weights are ever written.

Progress: ``[train zh] step 500/5000 loss ... val_overall_iou ... best ...`` at each validation
(INFO), a line per ``log_every`` steps with ``-v``; a tqdm bar when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import logs
from components.errors import ConfigError, InputError
from components.training.layout import TrainOutput

EXIT_PREEMPTED = 143  # 128 + SIGTERM: "terminated, state saved, run me again"


@dataclass
class TrainOptions:
    """One training run: the CLI flags of ``refseg train`` and the pipeline's train step."""

    data: str  # tokenize output folder (local or s3://)
    lang: str  # "zh" or "en"
    out: str  # local output folder; the same folder resumes
    config: str = "small3"  # preset, preset:row, ablation/<row> or YAML file (configs/)
    steps: int | None = None  # None: the config's
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)  # --set key=value (model or train)
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db
    val_every: int | None = None  # None: the config's
    deterministic: bool = False  # deterministic algorithms (bit-identical reruns on CPU)
    parent_run_id: str | None = None  # MLflow parent run (tag mlflow.parentRunId); None: none
    resume_uri: str | None = None  # resume location that outlives the machine; None: OUT only

    def check(self) -> None:
        from components.data import storage

        if self.lang not in ("zh", "en"):
            raise InputError(f"lang must be 'zh' or 'en', got {self.lang!r}")
        if not self.out:
            raise ConfigError("out_dir is required")
        if storage.is_s3(str(self.out)):
            raise ConfigError(f"--out {self.out}: give a local folder (artifacts reach S3 via "
                              "MLflow)")
        if self.resume_uri:
            from components.training.state import ResumeLocation

            ResumeLocation(self.resume_uri)  # a local folder or s3://bucket/prefix


def run_training(opts: TrainOptions) -> dict[str, Any]:
    """Train (or resume) one language's model into ``opts.out``; returns the summary dict."""
    from components.text.tokenized import TokenizedData
    from components.training.config import load_run_config
    from components.training.distributed import Dist, select_device

    t_start = time.perf_counter()
    log = logs.get_logger("train", opts.lang)
    opts.check()
    data = TokenizedData.checked(str(opts.data))  # its completion marker vouches for it
    model_cfg, train_cfg, explicit = load_run_config(
        opts.config, opts.overrides, opts.seed, opts.steps, opts.val_every, opts.deterministic)
    if train_cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    from components.training.trainer import Trainer

    dist = Dist()
    device = select_device(dist)
    dist.setup(device.type)
    try:
        trainer = Trainer(data, opts.lang, model_cfg, train_cfg,
                          out=Path(opts.out), seed=opts.seed, config=str(opts.config),
                          explicit=explicit, tracking_uri=opts.tracking_uri, dist=dist,
                          device=device, t_start=t_start, parent_run_id=opts.parent_run_id,
                          resume_uri=opts.resume_uri or None)
        trainer.build()
        trainer.resume()
        trainer.start_tracking()
        if dist.main:
            log.info(f"{opts.config}: {len(trainer.train_ds)} images, "
                     f"{trainer.train_ds.num_expressions} expressions, {trainer.total} steps "
                     f"(from step {trainer.steps_done}) on {device.type} x {dist.world}; MLflow "
                     f"run {trainer.run_id}")
        interrupted = trainer.fit()
        if not interrupted:
            trainer.save_final()
        summary = trainer.summary(interrupted)
        if dist.main:
            summary_path = TrainOutput(opts.out).summary
            summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True))
            if not interrupted:
                trainer.publish(summary_path)
        dist.barrier()
        return summary
    finally:
        dist.teardown()


def train(
    data_dir: str,
    lang: str,
    config: str = "small3",
    out_dir: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
    quiet: bool = False,
    val_every: int | None = None,
    deterministic: bool = False,
    parent_run_id: str | None = None,
    resume_uri: str | None = None,
) -> dict[str, Any]:
    """:func:`run_training` with keyword arguments (the pipeline's train step and the tests).
    ``quiet`` is accepted for old callers and does nothing: the log level decides what shows."""
    del quiet
    return run_training(TrainOptions(
        data=str(data_dir), lang=lang, out=str(out_dir or ""), config=str(config), steps=steps,
        seed=seed, overrides=dict(overrides or {}), tracking_uri=tracking_uri,
        val_every=val_every, deterministic=deterministic, parent_run_id=parent_run_id,
        resume_uri=resume_uri))


def task_resume_uri(resume_root: str, pipeline_root: str, pipeline_run: str, lang: str,
                    config: str, seed: int) -> str | None:
    """The resume location of a pipeline's train task (layout.pipeline_resume_uri): under
    ``resume_root``, or when that is empty under the pipeline root if the step can write there
    (a local folder under kfp.local, or s3://). None, with a warning that a retry starts from
    step 0, when neither is usable (a minio:// or gs:// pipeline root the step has no client for,
    or a placeholder the backend left unresolved); a ``resume_root`` that is neither a local
    folder nor s3:// is refused."""
    from components.data import storage
    from components.training.layout import pipeline_resume_uri

    def usable(root: str) -> bool:
        return bool(root) and "{{" not in root and (storage.is_s3(root) or "://" not in root)

    if resume_root and not usable(resume_root):
        raise ConfigError(f"resume_root {resume_root!r}: give an s3:// prefix or a local folder "
                          "(a shared volume)")
    root = resume_root or pipeline_root
    if not usable(root):
        logs.get_logger("train", lang).warning(
            f"the resume state stays in this pod (pipeline root {pipeline_root!r} is not s3:// "
            "and resume_root is empty): a retry of this task starts from step 0; set the "
            "pipeline parameter resume_root=s3://<bucket>/<prefix>")
        return None
    return pipeline_resume_uri(root, pipeline_run, lang, config, seed)


def train_task(data_dir: str, lang: str, out_dir: str, *, resume_uri: str | None,
               **kwargs: Any) -> dict[str, Any]:
    """The pipeline's train task: :func:`train` with its resume location. A run stopped by
    SIGTERM (a pod evicted) exits with code 143 so that the task fails and its retry resumes
    from the saved state; a finished run removes the state from the resume location (the model
    artifact keeps ``resume.pt``)."""
    from components.training.state import ResumeLocation

    summary = train(data_dir, lang, out_dir=out_dir, resume_uri=resume_uri, **kwargs)
    if summary["interrupted"]:
        logs.get_logger("train", lang).warning(
            f"stopped at step {summary['steps']} (SIGTERM); state saved to "
            f"{resume_uri or out_dir}: a retry of this task resumes from it")
        raise SystemExit(EXIT_PREEMPTED)
    if resume_uri:
        ResumeLocation(resume_uri).clear()
    return summary


# ------------------------------------------------------------------------------------------------
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Train one language's LE/LA/CLAF model on a tokenize output folder, tracked in MLflow.\n"
        "The same command runs one process or many under torchrun (DDP: NCCL on GPU, gloo on "
        "CPU).\n"
        "Writes OUT/checkpoints/{best,last}.pt, OUT/resume.pt, OUT/tokenizer/, OUT/summary.json,"
        " OUT/run_id.txt.\n"
        "SIGTERM saves OUT/resume.pt and exits 143; running the same command with the same --out"
        "\nresumes from it and continues the same MLflow run. --resume-uri (a shared folder or an"
        "\ns3:// prefix) keeps that state off the machine: a run started elsewhere with the same"
        "\n--resume-uri resumes from it. A NaN loss stops with exit code 1."
        "\n\nexamples:\n"
        "  refseg train --data runs/tok --lang zh --config small --out runs/zh\n"
        "  refseg train --data runs/tok --lang en --config small --out runs/en --set lr=1e-3 "
        "--steps 2000\n"
        "  refseg train --data runs/tok --lang en --config paper --out runs/en \\\n"
        "      --set backbone_weights=resnet101.pth          # on a GPU\n"
        "  refseg train --data runs/tok --lang en --config ablation/row4_le_la --out runs/row4 "
        "\\\n      --set backbone_weights=resnet101.pth          # a Table 4 row\n"
        "  refseg train --data runs/tok --lang en --config small:row9_mutan_le_la --out r9"
        "       # a row on CPU\n"
        "  torchrun --standalone --nproc_per_node=4 -m pipelines.cli train --data D --lang en "
        "\\\n      --config paper --set backbone_weights=W --out runs/en  # 4 processes (DDP)\n"
        "A frozen resnet backbone without backbone_weights is refused (or give "
        "--set backbone_frozen=false).")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--data", required=True, help="tokenize output folder (local or s3://)")
    p.add_argument("--lang", required=True, choices=("zh", "en"))
    p.add_argument("--config", default="small3",
                   help="a preset of configs/ (small3, small, paper), preset:ablation_row (e.g. "
                        "small:row1_baseline), ablation/<row> or a YAML file (default small3: "
                        "the full three-level network scaled for a CPU)")
    p.add_argument("--out", required=True, help="output folder (local)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model or training field, e.g. --set lr=1e-3 --set "
                        "input_size=96 (repeatable)")
    p.add_argument("--val-every", type=int, default=None, help="validate every N steps")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (bit-identical reruns on CPU)")
    p.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI or "
                   "sqlite:///<cwd>/mlflow.db")
    p.add_argument("--resume-uri", default=None,
                   help="where the resumable state also goes, for a restart on another machine: "
                        "a local folder (shared volume) or s3://bucket/prefix (default: only "
                        "OUT/resume.pt)")
    p.add_argument("--parent-run-id", default=None, help="MLflow run to nest this run under "
                   "(tag mlflow.parentRunId; the ablation pipeline's parent run)")


def run(args) -> int:
    from components.training.config import parse_sets
    from components.training.trainer import NonFiniteLossError

    opts = TrainOptions(data=args.data, lang=args.lang, out=args.out, config=args.config,
                        steps=args.steps, seed=args.seed, overrides=parse_sets(args.set),
                        tracking_uri=args.tracking_uri, val_every=args.val_every,
                        deterministic=args.deterministic, parent_run_id=args.parent_run_id,
                        resume_uri=args.resume_uri)
    try:
        s = run_training(opts)
    except NonFiniteLossError as exc:
        print(f"refseg train: NonFiniteLossError: {exc}", file=sys.stderr)
        return 1
    if s["interrupted"]:
        return EXIT_PREEMPTED
    if int(os.environ.get("RANK", "0")) == 0:
        best = s["best_val_overall_iou"]
        print(f"trained {s['lang']} for {s['steps']} steps in {s['timings']['total_s']} s; best "
              f"{s['select_split']} overall IoU {best if best is None else round(best, 4)} at step "
              f"{s['best_step']}; run {s['run_id']}; {args.out}/checkpoints/best.pt")
    return 0
