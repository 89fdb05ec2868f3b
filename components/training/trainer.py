"""The Trainer: one language's model on a tokenize output folder, step by step.

``build`` (seeds, data, model, optimiser), ``resume`` (from ``OUT/resume.pt`` when there is one),
``start_tracking`` (MLflow, the tokenizer folder), then ``fit``: the loop of ``step`` (one
optimiser step), ``validate`` (keeps the best checkpoint) and ``save_resume``. Training follows
docs/method.md: pixel-averaged BCE, Adam, polynomial decay after an optional warm-up, gradient-norm
clipping, bfloat16 autocast on CUDA. A batch (``batching``) is a group of images, each with all its
expressions (``image``: the backbone runs once per image), or ``batch_size`` image-expression pairs
(``pair``, the paper's), both from components.data.refdata. Under DDP each rank's loss is weighted
by its share of the global batch's expressions, so the averaged gradient equals the single-process
gradient of the same global batch. Validation runs on ``select_split`` and keeps the best
checkpoint by its overall IoU; its metrics are named after the split (``val_*`` by default).

Faults: SIGTERM finishes the current step, writes ``resume.pt`` and ends ``fit`` as interrupted
(the MLflow run KILLED); ``resume.pt`` is also written every ``resume_every`` steps. With a resume
location (``resume_uri``: a local folder or s3:// prefix that outlives the machine) every
``resume.pt`` is also uploaded there, with the best checkpoint, and a process that starts on a
fresh machine (a retried pipeline task) downloads and resumes from it (state.ResumeLocation).
A non-finite loss or gradient norm raises :class:`NonFiniteLossError` before the optimiser step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components import logs
from components.data import storage
from components.data.refdata import GroupedSampler, PairSampler, RefDataset, collate_grouped
from components.errors import ConfigError, InputError, MissingInputError, RefsegError
from components.provenance import git_commit
from components.text.tokenized import TokenizedData
from components.text.tokenizer import FINGERPRINT_KEY, vocab_file, vocab_fingerprint
from components.training.config import ALIASES, TrainConfig
from components.training.distributed import Dist
from components.training.guards import check_trainable
from components.training.layout import (
    ARTIFACT_SUMMARY_DIR,
    ARTIFACT_TOKENIZER,
    BEST,
    CHECKPOINTS,
    LAST,
    TrainOutput,
)
from components.training.schedule import optimizer_and_schedule
from components.training.state import (
    ResumeLocation,
    load_resume,
    rng_state,
    save_resume,
    saved_step,
    set_rng_state,
)
from components.training.tracking import PARENT_RUN_TAG, UNSENT_FILE, Tracker, flatten
from components.training.validation import Validation, validate
from model import (
    ModelConfig,
    build_model,
    forward,
    prepare_model,
    save_checkpoint,
    segmentation_loss,
)
from model.backbone_weights import resolve_backbone_format
from model.geometry import InputFit


class NonFiniteLossError(RefsegError, FloatingPointError):
    """The loss (or the gradient norm) is NaN/inf; raised before the optimiser step."""


@dataclass
class StepResult:
    loss: float
    lr: float  # the learning rate this step used
    grad_norm: float
    expressions: int  # in the global batch
    stop: bool  # some rank was asked to stop (SIGTERM)


@dataclass
class _Window:
    """Steps since the last progress update: throughput and mean loss."""

    start: float
    expressions: int = 0
    loss: float = 0.0
    steps: int = 0


def _config_diff(stored: dict[str, dict[str, Any]], resolved: dict[str, dict[str, Any]]):
    """The ``section.key`` names whose stored value differs from the run's. A resume file written
    before a field existed lacks it: it then counts as that field's default; old key names
    (``val_split``) count as their new ones."""
    defaults = {"model": ModelConfig().to_dict(), "train": TrainConfig().to_dict()}
    out = []
    for sec in ("model", "train"):
        old = dict(stored[sec])
        for alias, new in (ALIASES.items() if sec == "train" else ()):
            if alias in old:
                old.setdefault(new, old.pop(alias))
        out += [f"{sec}.{k}" for k, v in resolved[sec].items()
                if old.get(k, defaults[sec].get(k)) != v]
    return out


def _plain(resolved: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The resolved configuration as JSON gives it back (tuples as lists): what a resume
    location's pointer holds, so the two compare field by field."""
    import json

    return json.loads(json.dumps(resolved, default=str))


class Trainer:
    """One training run of ``lang`` on ``data`` into the local folder ``out``."""

    def __init__(self, data: TokenizedData, lang: str, model_cfg: ModelConfig,
                 train_cfg: TrainConfig, *, out: Path, seed: int, config: str,
                 explicit: set[str], tracking_uri: str | None, dist: Dist, device,
                 t_start: float | None = None, parent_run_id: str | None = None,
                 resume_uri: str | None = None):
        self.data, self.lang, self.model_cfg, self.train_cfg = data, lang, model_cfg, train_cfg
        self.out, self.seed, self.config, self.explicit = Path(out), int(seed), str(config), explicit
        self.layout = TrainOutput(self.out)
        self.dist, self.device = dist, device
        self.tracker = Tracker(dist.main, tracking_uri, unsent=self.out / UNSENT_FILE)
        self.parent_run_id = parent_run_id or None  # an MLflow parent run (the ablation's)
        self.log = logs.get_logger("train", lang)
        self.resume_path = self.layout.resume
        # where a restarted process on another machine finds the state (None: OUT only)
        self.remote = ResumeLocation(resume_uri) if resume_uri else None
        self.resumed_from = 0
        self.total = int(train_cfg.steps)
        self.steps_done, self.epoch, self.pos = 0, 0, 0
        self.best, self.best_step = -1.0, -1
        self.run_id: str | None = None
        self.history: list[dict[str, Any]] = []
        self.last_val: Validation | None = None
        self.stop_requested = False
        self.t_start = time.perf_counter() if t_start is None else t_start
        self.elapsed_before = self.setup_s = self.train_s = self.val_s = 0.0
        self.expr_seen = 0
        self.window = _Window(time.perf_counter())

    # ---- build ---------------------------------------------------------------------------------
    def build(self) -> None:
        """Seeds, the data (vocabulary, word vectors, datasets, sampler), model and optimiser;
        a config that would train on a frozen random backbone is refused first (guards.py)."""
        check_trainable(self.model_cfg)
        # backbone_format "auto" -> the weight file's layout, before the datasets (its pixel
        # convention colours the padding) and before anything records the config
        self.backbone_file = self._backbone_weights_file()
        fmt = resolve_backbone_format(
            self.model_cfg.replace(backbone_weights=self.backbone_file)).backbone_format
        self.model_cfg = self.model_cfg.replace(backbone_format=fmt)
        self._seed_everything()
        vocab_size, emb = self._word_vectors()
        self.fingerprint = self.data.fingerprint(self.lang)
        self._datasets()
        self._model(vocab_size, emb)

    def _backbone_weights_file(self) -> str | None:
        """A local path of ``backbone_weights`` (an s3:// file is downloaded into OUT/cache once);
        the config keeps the name the user gave."""
        uri = self.model_cfg.backbone_weights
        if not uri:
            return None
        if storage.is_s3(uri):
            self.log.info("backbone weights: downloading %s", uri)
        try:
            return storage.local_copy(uri, str(self.layout.cache))
        except FileNotFoundError as exc:
            raise MissingInputError(f"backbone_weights {uri}: no such file") from exc

    def _seed_everything(self) -> None:
        if self.train_cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if self.device.type == "cpu" and self.dist.enabled:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(
                os.environ.get("LOCAL_WORLD_SIZE", self.dist.world))))
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(self.seed)

    def _word_vectors(self) -> tuple[int, np.ndarray | None]:
        """(vocabulary size, the tokenize step's word vectors or None); they set ``embed_dim``
        unless the user set it."""
        vocab = self.data.read_vocab(self.lang)
        self.vocab_size, self.vocab_fingerprint = len(vocab), vocab_fingerprint(vocab)
        emb = self.data.read_embeddings(self.lang) if self.train_cfg.pretrained_embeddings else None
        self.emb_note = "random (pretrained_embeddings: false)"
        if self.train_cfg.pretrained_embeddings and emb is None:
            raise InputError(f"{self.data.embeddings_uri(self.lang)} is missing: the tokenize "
                             "step writes it (rerun tokenize), or set "
                             "train.pretrained_embeddings=false to train with random embeddings")
        if emb is not None:
            if emb.shape[0] != self.vocab_size:
                raise InputError(f"{self.data.embeddings_uri(self.lang)} has {emb.shape[0]} rows "
                                 f"but {vocab_file(self.lang)} has {self.vocab_size} tokens")
            if int(emb.shape[1]) != self.model_cfg.embed_dim:
                if "embed_dim" in self.explicit:
                    emb = None
                    self.emb_note = f"random (embed_dim {self.model_cfg.embed_dim} set explicitly)"
                else:
                    self.model_cfg = self.model_cfg.replace(embed_dim=int(emb.shape[1]))
            if emb is not None:
                name = os.path.basename(self.data.embeddings_uri(self.lang))
                self.emb_note = f"{name} ({emb.shape[1]}-d)"
        return self.vocab_size, emb

    def _datasets(self) -> None:
        cfg, size, cache = self.train_cfg, self.model_cfg.input_size, str(self.layout.cache)
        self.train_ds = RefDataset(self.data, self.lang, "train", size, cache_dir=cache,
                                   memory_cache=cfg.memory_cache, fit=InputFit.of(self.model_cfg))
        if len(self.train_ds) == 0:
            raise InputError(f"{self.data.root}: split 'train' has no samples for language "
                             f"{self.lang!r}")
        self.val_ds = self._select_dataset()
        counts, world, rank = self.train_ds.expression_counts(), self.dist.world, self.dist.rank
        if cfg.batching == "pair":
            self.sampler = PairSampler(counts, shuffle=True, seed=self.seed, num_replicas=world,
                                       rank=rank, batch_size=cfg.per_step, drop_last=True,
                                       **cfg.augmentation)
        else:
            self.sampler = GroupedSampler(
                counts, shuffle=True, seed=self.seed,
                max_expressions=cfg.max_expressions_per_image, num_replicas=world, rank=rank,
                batch_size=cfg.per_step, drop_last=True, **cfg.augmentation)
        self._mirrors(cfg)
        self.per_epoch = self.sampler.batches_per_epoch()

    def _mirrors(self, cfg) -> None:
        """The word tables of the flips the config asks for (components/data/flip.py)."""
        from components.data.flip import HORIZONTAL, VERTICAL, MirrorTable

        for share, axis, attr in ((cfg.hflip, HORIZONTAL, "mirror"),
                                  (cfg.vflip, VERTICAL, "vmirror")):
            if share > 0:
                table = MirrorTable(self.data.read_vocab(self.lang), self.lang, axis=axis)
                setattr(self.train_ds, attr, table)
                self.log.info("%s flip on %.0f%% of the items; %d words swapped, %d block it",
                              axis, 100 * share, len(table.swapped), int(table.blocked.sum()))
        if cfg.zoom_out > 0:
            self.log.info("zoom-out: each item shrunk by a factor in [%.2f, 1]", 1 - cfg.zoom_out)

    def _select_dataset(self) -> RefDataset | None:
        """The ``select_split`` dataset; None (no validation) only when the config says
        ``select_split: null``: a split that is missing or empty is an error, since best.pt would
        be chosen on nothing."""
        split = self.train_cfg.select_split
        if split is None:
            self.log.warning("select_split is null: no validation; best.pt is the last weights")
            return None
        try:
            ds = RefDataset(self.data, self.lang, split, self.model_cfg.input_size,
                            cache_dir=str(self.layout.cache),
                            memory_cache=self.train_cfg.memory_cache,
                            fit=InputFit.of(self.model_cfg))
        except FileNotFoundError:
            ds = None
        if ds is None or len(ds) == 0:
            raise ConfigError(f"select_split {split!r}: {self.data.root} has no samples of that "
                              f"split for language {self.lang!r} (tokenize a {split!r} split, "
                              "choose another with train.select_split=<split>, or set "
                              "train.select_split=null to train without validation)")
        return ds

    def _model(self, vocab_size: int, emb: np.ndarray | None) -> None:
        built = build_model(self.model_cfg.replace(backbone_weights=self.backbone_file),
                            vocab_size, emb)
        built.cfg = self.model_cfg  # the weights' name as the user gave it (an s3:// URI stays)
        model = prepare_model(built, self.device)
        if (self.dist.enabled and self.device.type == "cuda" and self.train_cfg.sync_bn
                and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                        for m in model.modules())):
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.train()
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt, self.sched = optimizer_and_schedule(self.params, self.train_cfg)
        self.net = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(model, device_ids=[self.device.index]
                           if self.device.type == "cuda" else None)

    @property
    def resolved(self) -> dict[str, dict[str, Any]]:
        return {"model": self.model_cfg.to_dict(), "train": self.train_cfg.to_dict()}

    # ---- resume --------------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from ``OUT/resume.pt`` when it exists (refused when it was written with
        another configuration, data folder or language); with a resume location, its newer state
        is downloaded into OUT first."""
        self._fetch_remote()
        items_done = 0
        if self.resume_path.exists():
            st = load_resume(str(self.resume_path))
            diff = _config_diff(st["config"], self.resolved)
            if diff:
                raise ConfigError(f"{self.resume_path} was written with a different configuration "
                                  f"({', '.join(diff[:8])}); use a fresh --out or delete it")
            if st["data_fingerprint"] != self.fingerprint or st["lang"] != self.lang:
                raise InputError(f"{self.resume_path} belongs to another data dir or language "
                                 f"(fingerprint {st['data_fingerprint'][:12]}, lang {st['lang']})")
            self.model.load_state_dict(st["model"])
            self.opt.load_state_dict(st["optimizer"])
            self.sched.load_state_dict(st["scheduler"])
            set_rng_state(st["rng"])
            self.steps_done, self.epoch = int(st["step"]), int(st["epoch"])
            items_done = int(st["items_in_epoch"])
            self.best, self.best_step = float(st["best_val"]), int(st["best_step"])
            self.run_id, self.elapsed_before = st["run_id"], float(st["elapsed_s"])
            self.history = list(st["history"])
            self.resumed_from = self.steps_done
        self._check_ranks_agree()
        self.pos = items_done // (self.train_cfg.per_step * self.dist.world)
        if self.pos >= self.per_epoch:
            self.epoch, self.pos = self.epoch + 1, 0

    def _fetch_remote(self) -> None:
        """The first process of each machine: when the resume location holds a newer state than
        ``OUT/resume.pt``, check that it belongs to this run (language, vocabulary, data,
        configuration; one-line errors) and download it, with its best checkpoint, into OUT."""
        if self.remote is None:
            return
        if self.dist.local_rank == 0:
            where = self.remote.uri
            ptr = self.remote.pointer()
            if ptr is None:
                self.log.info(f"resume location {where}: no saved state yet")
            else:
                self.remote.check(ptr, self.lang, self.fingerprint, self.vocab_fingerprint)
                diff = _config_diff(ptr["config"], _plain(self.resolved))
                if diff:
                    raise ConfigError(f"resume location {where} was written with a different "
                                      f"configuration ({', '.join(diff[:8])}); give this run "
                                      "its own location")
                here = saved_step(self.resume_path)
                if here.isdigit() and int(here) >= int(ptr["step"]):
                    self.log.info(f"resume location {where}: step {ptr['step']}; "
                                  f"{self.resume_path} is at step {here}, kept")
                else:
                    self.remote.fetch(ptr, self.resume_path, self.layout.best)
                    self.log.info(f"resume location {where}: state of step {ptr['step']} "
                                  "downloaded")
        self.dist.barrier()

    def _check_ranks_agree(self) -> None:
        """Every rank must resume from the same state: under multi-node torchrun OUT has to be a
        folder all nodes see (a shared volume), otherwise the ranks would silently diverge."""
        if not self.dist.enabled:
            return
        step0 = self.dist.broadcast_object(self.steps_done)
        bad = self.dist.all_reduce(torch.tensor([float(self.steps_done != step0)],
                                                device=self.device))
        if float(bad[0]) > 0:
            raise ConfigError(f"rank {self.dist.rank}: {self.resume_path} gives step "
                              f"{self.steps_done} but rank 0 resumes from step {step0}; under "
                              "multi-node torchrun --out must be a folder shared by all nodes")

    # ---- tracking ------------------------------------------------------------------------------
    def start_tracking(self) -> None:
        """Rank 0: OUT/tokenizer/, the MLflow run (the same one when resuming), run_id.txt,
        params (once) and tags (``mlflow.parentRunId`` when the run has a parent)."""
        resumed = self.run_id is not None
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.tokenizer_dir = self.data.export_tokenizer(self.lang, str(self.layout.tokenizer))
            self.run_id = self.tracker.start(
                self.run_id, run_name=f"train-{self.lang}-{self.model_cfg.name}-s{self.seed}")
            self.layout.run_id_file.write_text(self.run_id + "\n")
            if not resumed:
                self.tracker.params(self._params())
            dev_name = (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                        else f"cpu ({os.cpu_count()} cores)")
            self.tracker.tags({"device": dev_name, "device_type": self.device.type,
                               "lang": self.lang, "world_size": str(self.dist.world),
                               "torch": torch.__version__, "refseg.step": "train",
                               "data_fingerprint": self.fingerprint})
            if self.parent_run_id:
                self.tracker.tags({PARENT_RUN_TAG: self.parent_run_id})
        self.run_id = self.dist.broadcast_object(self.run_id)

    def _params(self) -> dict[str, str]:
        resolved = self.resolved
        p = {**flatten("model", resolved["model"]), **flatten("train", resolved["train"])}
        p.update(config=self.config, lang=self.lang, seed=str(self.seed),
                 world_size=str(self.dist.world), data_dir=self.data.root,
                 data_fingerprint=self.fingerprint, git_commit=git_commit(),
                 vocab_size=str(self.vocab_size), vocab_fingerprint=self.vocab_fingerprint,
                 embeddings=self.emb_note,
                 train_images=str(len(self.train_ds)),
                 train_expressions=str(self.train_ds.num_expressions),
                 val_images=str(len(self.val_ds) if self.val_ds is not None else 0))
        return p

    # ---- the loop ------------------------------------------------------------------------------
    def fit(self) -> bool:
        """Train until ``steps``; returns True when SIGTERM interrupted the run."""
        cfg, status, interrupted = self.train_cfg, "FAILED", False
        with self._stop_on_sigterm(), self._progress_bar() as bar:
            self.setup_s = time.perf_counter() - self.t_start
            try:
                loader = self._loader() if self.steps_done < self.total else None
                while self.steps_done < self.total:
                    batch = next(loader, None)
                    if batch is None:  # the epoch ran out
                        self.epoch, self.pos = self.epoch + 1, 0
                        loader = self._loader()
                        continue
                    res = self.step(batch)
                    self._progress(res, bar)
                    if self.val_ds is not None and (self.steps_done % cfg.val_every == 0
                                                    or self.steps_done == self.total):
                        self.validate(res.loss)
                    if self.pos >= self.per_epoch:
                        self.epoch, self.pos = self.epoch + 1, 0
                        loader = self._loader()
                    if self.steps_done % cfg.resume_every == 0 and self.steps_done < self.total:
                        self.save_resume()
                    if self.stop_requested or res.stop:  # all ranks stop after the same step
                        interrupted = True
                        self.save_resume()
                        if self.dist.main:
                            self.log.warning(f"SIGTERM: state saved to {self.resume_path} at "
                                             f"step {self.steps_done}; run the same command "
                                             "again to resume")
                        break
                status = "KILLED" if interrupted else "FINISHED"
            except NonFiniteLossError:
                self.tracker.tags({"failure": "non-finite loss"})
                raise
            finally:
                if status != "FINISHED":
                    self._end_tracking(status)
        return interrupted

    def _loader(self):
        """An iterator over this rank's batches of the current epoch from ``pos`` on."""
        from torch.utils.data import DataLoader

        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start(self.pos * self.train_cfg.per_step)
        nw = int(self.train_cfg.num_workers)
        return iter(DataLoader(self.train_ds, batch_size=self.train_cfg.per_step,
                               sampler=self.sampler, collate_fn=collate_grouped, num_workers=nw,
                               drop_last=True, pin_memory=self.device.type == "cuda",
                               prefetch_factor=4 if nw else None))

    def step(self, batch: dict[str, Any]) -> StepResult:
        """One optimiser step on ``batch``; nothing is updated when the loss or the gradient
        norm is not finite (:class:`NonFiniteLossError`)."""
        t0 = time.perf_counter()
        logits = forward(self.net, batch["images"], batch["tokens"], batch["lengths"],
                         batch["image_index"])["logits"]
        loss = segmentation_loss(logits, batch["masks"].to(self.device, non_blocking=True))
        nan_at = self.train_cfg.debug_nan_at_step
        if nan_at is not None and self.steps_done + 1 == int(nan_at):
            loss = loss * float("nan")
        # one all-reduce: global expression count, non-finite flag, stop request
        n_local = int(batch["tokens"].shape[0])
        flags = self.dist.all_reduce(torch.tensor(
            [float(n_local), 0.0 if torch.isfinite(loss) else 1.0,
             1.0 if self.stop_requested else 0.0], dtype=torch.float64, device=self.device))
        n_global = int(flags[0])
        if flags[1] > 0:
            raise NonFiniteLossError(self._non_finite_loss(float(loss.detach())))
        if self.dist.enabled:
            (loss * (n_local * self.dist.world / max(n_global, 1))).backward()
        else:
            loss.backward()
        gnorm = self._grad_norm()
        if not torch.isfinite(gnorm):
            raise NonFiniteLossError(
                f"gradient norm is {float(gnorm)} at step {self.steps_done + 1} (loss "
                f"{float(loss.detach()):.4g}); stopped before the optimiser step, no weights "
                f"of this step were saved; lower the learning rate (--set lr=...)")
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        lr_now = self.sched.get_last_lr()[0]
        self.sched.step()
        self.steps_done += 1
        self.pos += 1
        res = StepResult(float(loss.detach()), lr_now, float(gnorm), n_global, bool(flags[2] > 0))
        self.train_s += time.perf_counter() - t0
        self.expr_seen += n_global
        self.tracker.metrics({"loss": res.loss, "lr": res.lr, "grad_norm": res.grad_norm},
                             self.steps_done)
        return res

    def _grad_norm(self):
        if self.train_cfg.grad_clip > 0:
            return torch.nn.utils.clip_grad_norm_(self.params, self.train_cfg.grad_clip)
        return torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad) for p in self.params if p.grad is not None]))

    def _non_finite_loss(self, value: float) -> str:
        what = ("nan" if math.isnan(value) else "inf" if math.isinf(value)
                else "non-finite on another rank")
        return (f"loss is {what} at step {self.steps_done + 1} (lr "
                f"{self.sched.get_last_lr()[0]:.3g}); stopped before the optimiser step, no "
                f"weights of this step were saved (last good state: {self.resume_path} at step "
                f"{saved_step(self.resume_path)}); lower the learning rate (--set lr=...) or "
                "check the data")

    def _progress(self, res: StepResult, bar) -> None:
        """Every ``log_every`` steps: throughput to MLflow, the bar's numbers, a debug line."""
        w = self.window
        w.expressions, w.loss, w.steps = w.expressions + res.expressions, w.loss + res.loss, w.steps + 1
        if self.steps_done % self.train_cfg.log_every == 0 or self.steps_done == self.total:
            thr = w.expressions / max(time.perf_counter() - w.start, 1e-9)
            self.tracker.metrics({"throughput_expr_per_s": thr}, self.steps_done)
            self.tracker.flush()
            if bar is not None:
                bar.set_postfix(loss=f"{w.loss / w.steps:.4f}", expr_s=f"{thr:.1f}",
                                best=f"{max(self.best, 0):.3f}")
            self.log.debug(f"step {self.steps_done}/{self.total} loss {w.loss / w.steps:.4f} "
                           f"{thr:.1f} expressions/s")
            self.window = _Window(time.perf_counter())
        if bar is not None:
            bar.update(1)

    # ---- validate and save ---------------------------------------------------------------------
    @property
    def split(self) -> str:
        """The split validated on (``select_split``): the prefix of the validation metrics."""
        return self.train_cfg.select_split

    def validate(self, loss: float) -> Validation:
        """Validate on ``select_split``; a better overall IoU than before writes
        ``checkpoints/best.pt``."""
        t_val = time.perf_counter()
        v = validate(self.model, self.val_ds, self.dist, self.train_cfg.val_batch_images,
                     self.train_cfg.val_max_images)
        self.val_s += time.perf_counter() - t_val
        self.last_val = v
        improved = v.overall_iou > self.best
        if improved:
            self.best, self.best_step = v.overall_iou, self.steps_done
        sp = self.split
        self.history.append({"step": self.steps_done, **v.metrics(sp)})
        if self.dist.main:
            self.tracker.metrics({**v.metrics(sp), f"best_{sp}_overall_iou": self.best},
                                 self.steps_done)
            self.tracker.flush()
            if improved:
                self.save_checkpoint(BEST, v.overall_iou)
            self.log.info(f"step {self.steps_done}/{self.total} loss {loss:.4f} "
                          f"{sp}_overall_iou {v.overall_iou:.4f} {sp}_mean_iou {v.mean_iou:.4f} "
                          f"best {self.best:.4f}@{self.best_step} ({self.elapsed():.0f} s)")
        self.window.start = time.perf_counter()  # validation time is not training throughput
        return v

    def elapsed(self) -> float:
        """Seconds of this run so far, earlier (resumed) processes included."""
        return self.elapsed_before + time.perf_counter() - self.t_start

    def save_checkpoint(self, name: str, val_overall_iou: float | None) -> None:
        save_checkpoint(str(self.layout.checkpoint(name)), self.model, self.model_cfg,
                        {"lang": self.lang, "vocab": vocab_file(self.lang),
                         FINGERPRINT_KEY: self.vocab_fingerprint,
                         "data_fingerprint": self.fingerprint, "step": self.steps_done,
                         "val_overall_iou": val_overall_iou, "select_split": self.split})

    def save_resume(self) -> None:
        """Rank 0: ``OUT/resume.pt``, then (with a resume location) the same state and the best
        checkpoint uploaded there."""
        if not self.dist.main:
            return
        save_resume({
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "rng": rng_state(), "step": self.steps_done,
            "epoch": self.epoch,
            "items_in_epoch": self.pos * self.train_cfg.per_step * self.dist.world,
            "run_id": self.run_id, "best_val": self.best, "best_step": self.best_step,
            "config": self.resolved, "data_fingerprint": self.fingerprint, "lang": self.lang,
            "world_size": self.dist.world, "elapsed_s": self.elapsed(), "history": self.history,
            FINGERPRINT_KEY: self.vocab_fingerprint,
        }, str(self.resume_path))
        if self.remote is not None:
            self.remote.push(self.resume_path, self.layout.best, {
                "step": self.steps_done, "best_step": self.best_step, "lang": self.lang,
                "data_fingerprint": self.fingerprint, FINGERPRINT_KEY: self.vocab_fingerprint,
                "config": _plain(self.resolved), "run_id": self.run_id})
            self.log.debug(f"step {self.steps_done}: state uploaded to {self.remote.uri}")

    def save_final(self) -> None:
        """``resume.pt`` and ``checkpoints/last.pt`` (and ``best.pt`` when no validation wrote
        one: the last weights are then the best known)."""
        self.save_resume()
        if not self.dist.main:
            return
        last_iou = self.last_val.overall_iou if self.last_val is not None else None
        self.save_checkpoint(LAST, last_iou)
        if self.val_ds is None or not self.layout.best.exists():
            self.save_checkpoint(BEST, last_iou)

    def publish(self, summary_path: Path) -> None:
        """Rank 0: best.pt, the tokenizer folder and the summary to MLflow; the run FINISHED."""
        self.tracker.artifact(str(self.layout.best), CHECKPOINTS)
        self.tracker.artifact(str(self.tokenizer_dir), ARTIFACT_TOKENIZER)
        self.tracker.artifact(str(summary_path), ARTIFACT_SUMMARY_DIR)
        if self.best >= 0:
            self.tracker.metrics({f"best_{self.split}_overall_iou": self.best}, self.steps_done)
        self.tracker.end("FINISHED")

    def summary(self, interrupted: bool) -> dict[str, Any]:
        now = time.perf_counter()
        return {
            "run_id": self.run_id, "lang": self.lang, "config": self.config, "seed": self.seed,
            "steps": self.steps_done, "total_steps": self.total, "interrupted": interrupted,
            "best_val_overall_iou": self.best if self.best >= 0 else None,
            "best_step": self.best_step, "select_split": self.split,
            "batching": self.train_cfg.batching,
            "last_val": self.last_val.metrics(self.split) if self.last_val is not None else None,
            "world_size": self.dist.world, "device": self.device.type,
            "data_fingerprint": self.fingerprint, "train_images": len(self.train_ds),
            "train_expressions": self.train_ds.num_expressions,
            "timings": {"total_s": round(self.elapsed_before + now - self.t_start, 2),
                        "this_process_s": round(now - self.t_start, 2),
                        "setup_s": round(self.setup_s, 2),
                        "train_steps_s": round(self.train_s, 2),
                        "validation_s": round(self.val_s, 2),
                        "expressions_per_s": round(self.expr_seen / self.train_s, 2)
                        if self.train_s > 0 else None},
            "history": self.history, "out_dir": str(self.out),
            "resumed_from_step": self.resumed_from,
            "resume_uri": self.remote.uri if self.remote is not None else None,
            "model_config": self.resolved["model"], "train_config": self.resolved["train"],
        }

    # ---- helpers -------------------------------------------------------------------------------
    def _end_tracking(self, status: str) -> None:
        try:
            self.tracker.end(status)
        except Exception as exc:  # noqa: BLE001 - never hide the error that ended the run
            self.log.warning(f"could not close the MLflow run: {exc}")

    @contextlib.contextmanager
    def _stop_on_sigterm(self):
        """SIGTERM asks the loop to stop after the current step (main thread only)."""
        def on_term(signum, frame):  # noqa: ARG001
            self.stop_requested = True

        try:
            old = signal.signal(signal.SIGTERM, on_term)
        except ValueError:  # not the main thread: no handler, no graceful stop
            old = None
        try:
            yield
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)

    @contextlib.contextmanager
    def _progress_bar(self):
        """A tqdm bar on rank 0 when progress is shown (log lines then go through the bar)."""
        if not (self.dist.main and logs.progress_enabled(self.log)):
            yield None
            return
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        bar = tqdm(total=self.total, initial=self.steps_done, desc=f"train {self.lang}",
                   unit="step", file=sys.stderr, dynamic_ncols=True)
        try:
            with logging_redirect_tqdm(loggers=[logging.getLogger(logs.ROOT)]):
                yield bar
        finally:
            bar.close()
