"""The train step: one language's LE/LA/CLAF model on a tokenize output folder, tracked in MLflow.

``refseg train --data DIR --lang zh|en --config small|paper|file.yaml --out OUT [--steps N]
[--seed S] [--set key=value ...] [--quiet]``; the same command line runs one process or many under
``torchrun`` (DDP: NCCL on GPU, gloo on CPU, detected from ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``).

Training (METHOD.md "Loss and training"): pixel-averaged BCE, Adam (paper lr 2.5e-4), polynomial
decay after an optional linear warm-up, gradient-norm clipping, bfloat16 autocast on CUDA. Batches
are groups of images, each with its expressions (components.refdata): the backbone runs once per
image. Under DDP each rank's loss is weighted by its share of the global batch's expressions, so the
averaged gradient equals the single-process gradient of the same global batch.

Output (docs/CONTRACTS.md "Train OUT"): ``checkpoints/best.pt`` (best validation overall IoU),
``checkpoints/last.pt``, ``resume.pt`` (the whole training state), ``tokenizer/``,
``summary.json``, ``run_id.txt``.

Faults: SIGTERM finishes the current step, writes ``resume.pt`` and exits with code 143 (the CLI;
``train()`` returns a summary with ``"interrupted": true``); running the same command with the same
OUT resumes (same MLflow run). ``resume.pt`` is also written every ``resume_every`` steps, so a
SIGKILL loses at most that many steps. A non-finite loss or gradient norm raises
:class:`NonFiniteLossError` before the optimiser step, so no bad weights are ever written.

Configuration: the model's fields (model/config.py) plus the training fields of
:class:`TrainConfig`. ``--set key=value`` (and a YAML file's keys) go to whichever of the two knows
the key; a YAML file may say ``base: small|paper``. Training defaults come with the preset
(:data:`TRAIN_PRESETS`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components import storage

EXPERIMENT = "bilingual-refseg"
RESUME_FORMAT = "bilingual-refseg/resume-v1"
EXIT_PREEMPTED = 143  # 128 + SIGTERM: "terminated, state saved, run me again"


class NonFiniteLossError(FloatingPointError):
    """The loss (or the gradient norm) is NaN/inf; raised before the optimiser step."""


# ------------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Training fields (not architecture). Every field can be set with ``--set key=value``."""

    steps: int = 200_000
    lr: float = 2.5e-4  # paper
    lr_power: float = 0.9  # polynomial decay: lr * (1 - t/T)^power after warm-up
    lr_end_factor: float = 0.0  # floor of the decay as a share of lr
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 10.0  # max global gradient norm; 0 = off
    batch_images: int = 1  # images per process per step (each with its expressions)
    max_expressions_per_image: int | None = None  # None = all; else chunks of at most this many
    num_workers: int = 2  # DataLoader worker processes (0 = in the main process)
    memory_cache: bool = True  # keep decoded, resized images in memory (per worker)
    val_every: int = 5000
    val_split: str = "val"
    val_max_images: int | None = None  # None = the whole split
    val_batch_images: int = 8
    resume_every: int = 1000
    log_every: int = 10  # MLflow metric flush and progress update period (steps)
    pretrained_embeddings: bool = True  # embeddings_{lang}.npy from tokenize (sets embed_dim)
    sync_bn: bool = True  # SyncBatchNorm under DDP on GPU (CPU/gloo has none)
    deterministic: bool = False
    debug_nan_at_step: int | None = None  # test hook: multiply the loss by NaN at this step

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"train config: {msg}")

        need(int(self.steps) >= 1, f"steps must be >= 1, got {self.steps}")
        need(float(self.lr) > 0, f"lr must be > 0, got {self.lr}")
        need(int(self.batch_images) >= 1, f"batch_images must be >= 1, got {self.batch_images}")
        need(self.max_expressions_per_image is None or int(self.max_expressions_per_image) >= 1,
             "max_expressions_per_image must be >= 1 or null")
        need(int(self.num_workers) >= 0, "num_workers must be >= 0")
        need(int(self.val_every) >= 1, "val_every must be >= 1")
        need(int(self.resume_every) >= 1, "resume_every must be >= 1")
        need(int(self.log_every) >= 1, "log_every must be >= 1")
        need(float(self.grad_clip) >= 0, "grad_clip must be >= 0 (0 = off)")
        need(0 <= float(self.lr_end_factor) <= 1, "lr_end_factor must lie in [0, 1]")
        need(len(self.adam_betas) == 2, "adam_betas must be two numbers")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}

# Training defaults per model preset. ``small``: measured on the 600-image synthetic set on a
# 2-core CPU (docs/readme/train.md): ~0.055 s a step at 96 px with one level (Res3), 4000 steps
# in about 4 minutes to val overall IoU 0.56 (en). ``paper``: Adam 2.5e-4, one image (with its expressions) per step, 320 px.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(steps=200_000, lr=2.5e-4, batch_images=1, warmup_steps=0, grad_clip=10.0,
                  val_every=5000, resume_every=1000, num_workers=4, log_every=20,
                  val_batch_images=8),
    "small": dict(steps=5000, lr=3e-3, batch_images=4, warmup_steps=50, grad_clip=5.0,
                  val_every=1000, resume_every=500, num_workers=0, log_every=20,
                  max_expressions_per_image=None, val_batch_images=16),
}
TRAIN_PRESETS["small3"] = dict(TRAIN_PRESETS["small"], steps=2000)


def _coerce(value: str) -> Any:
    """``--set`` value: YAML scalar/list syntax (``1e-3``, ``true``, ``null``, ``[1, 2]``)."""
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def parse_sets(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs or []:
        key, sep, value = p.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {p!r}: expected key=value")
        out[key.strip()] = _coerce(value.strip())
    return out


def resolve_config(config: str, overrides: dict[str, Any] | None = None, seed: int = 0,
                   steps: int | None = None, val_every: int | None = None,
                   deterministic: bool = False):
    """(ModelConfig, TrainConfig, explicit model keys) from a preset name or YAML + overrides."""
    from model import load_config
    from model.config import PRESETS, ModelConfig

    model_over: dict[str, Any] = {}
    train_over: dict[str, Any] = {}
    src = str(config)
    preset = src.partition(":")[0]
    if preset in PRESETS:
        base = src
        train_base = preset
    elif os.path.isfile(src):
        import yaml

        with open(src, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{src}: a config YAML must be a mapping")
        base = data.pop("base", None)
        train_section = data.pop("train", None) or {}
        if not isinstance(train_section, dict):
            raise ValueError(f"{src}: 'train' must be a mapping of training fields")
        train_base = str(base).partition(":")[0] if base else "paper"
        for k, v in data.items():
            (train_over if k in TRAIN_FIELDS else model_over)[k] = v
        bad = sorted(set(train_section) - TRAIN_FIELDS)
        if bad:
            raise ValueError(f"{src}: unknown training keys {bad}; known: {sorted(TRAIN_FIELDS)}")
        train_over.update(train_section)
        base = base or ModelConfig()
    else:
        raise ValueError(f"config {src!r} is neither a preset {sorted(PRESETS)} (optionally "
                         "preset:ablation_row) nor an existing YAML file")
    for k, v in (overrides or {}).items():
        (train_over if k in TRAIN_FIELDS else model_over)[k] = v
    model_over.setdefault("seed", int(seed))
    mcfg = load_config(base, model_over)
    tdict = dict(TRAIN_PRESETS.get(train_base, TRAIN_PRESETS["paper"]))
    tdict.update(train_over)
    if steps is not None:
        tdict["steps"] = int(steps)
    if val_every is not None:
        tdict["val_every"] = int(val_every)
    if deterministic:
        tdict["deterministic"] = True
    try:
        tcfg = TrainConfig(**tdict)
    except TypeError as exc:
        raise ValueError(f"train config: {exc}") from None
    return mcfg, tcfg, set(model_over)


# ------------------------------------------------------------------------------------------------
def data_fingerprint(data_dir: str, lang: str) -> str:
    """sha256 over manifest.parquet, vocab_{lang}.json and every shards/{lang}/*.npz (sorted)."""
    h = hashlib.sha256()
    base = str(data_dir)
    names = ["manifest.parquet", f"vocab_{lang}.json"]
    shard_dir = storage.join(base, "shards", lang)
    shards = storage.list_files(shard_dir)
    rel = sorted(os.path.basename(s) for s in shards if s.endswith(".npz"))
    if not rel:
        raise FileNotFoundError(f"{shard_dir}: no shards for language {lang!r} (was tokenize run "
                                "with this language?)")
    for name in names + [f"shards/{lang}/{r}" for r in rel]:
        data = storage.read_bytes(storage.join(base, *name.split("/")))
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else "unknown"


def flatten(prefix: str, d: dict[str, Any]) -> dict[str, str]:
    return {f"{prefix}.{k}": json.dumps(v) if isinstance(v, (list, dict)) else str(v)
            for k, v in d.items()}


def lr_factor(step: int, total: int, warmup: int, power: float, end: float) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based): linear warm-up, then
    polynomial decay (1 - t/T)^power from 1 to ``end``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(max(step - warmup, 0), span)
    return end + (1.0 - end) * (1.0 - t / span) ** power


# ------------------------------------------------------------------------------------------------
class _Dist:
    """The process group (or a single process)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.started_here = False

    def setup(self, device_type: str) -> None:
        if not self.enabled:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
            self.started_here = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t):
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def broadcast_object(self, obj):
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def teardown(self) -> None:
        if self.enabled and self.started_here:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _select_device(dist: _Dist):
    import torch

    if torch.cuda.is_available():
        idx = dist.local_rank if dist.enabled else torch.cuda.current_device()
        torch.cuda.set_device(idx)
        return torch.device("cuda", idx)
    return torch.device("cpu")


# ------------------------------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    import torch

    v, internal, gauss = st["python"]
    random.setstate((v, tuple(internal), gauss))
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _atomic_save(obj: Any, path: str) -> None:
    import torch

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_resume(path: str) -> dict[str, Any]:
    import torch

    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(f"{path}: cannot be loaded safely (weights_only): "
                         f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(st, dict) or st.get("format") != RESUME_FORMAT:
        raise ValueError(f"{path} is not a {RESUME_FORMAT} file")
    return st


# ------------------------------------------------------------------------------------------------
class _Tracker:
    """MLflow on rank 0: params once, metrics buffered and flushed in batches, artifacts."""

    def __init__(self, enabled: bool, tracking_uri: str | None):
        self.enabled = enabled
        self.run_id: str | None = None
        self.uri = (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                    or f"sqlite:///{os.path.join(os.getcwd(), 'mlflow.db')}")
        self._buf: list = []
        self.client = None

    def start(self, run_id: str | None, run_name: str) -> str | None:
        if not self.enabled:
            return None
        import mlflow
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            return run_id
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(EXPERIMENT)
            except mlflow.exceptions.MlflowException:  # created by a concurrent process
                exp_id = self.client.get_experiment_by_name(EXPERIMENT).experiment_id
        else:
            exp_id = exp.experiment_id
        run = self.client.create_run(exp_id, run_name=run_name)
        self.run_id = run.info.run_id
        return self.run_id

    def params(self, params: dict[str, str]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def tags(self, tags: dict[str, str]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def metrics(self, values: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buf += [Metric(k, float(v), ts, int(step)) for k, v in values.items()]

    def flush(self) -> None:
        if not self.enabled or not self._buf:
            return
        for i in range(0, len(self._buf), 1000):
            self.client.log_batch(self.run_id, metrics=self._buf[i:i + 1000])
        self._buf = []

    def artifact(self, path: str, artifact_path: str) -> None:
        if not self.enabled:
            return
        if os.path.isdir(path):
            self.client.log_artifacts(self.run_id, path, artifact_path)
        else:
            self.client.log_artifact(self.run_id, path, artifact_path)

    def end(self, status: str) -> None:
        if not self.enabled or self.run_id is None:
            return
        self.flush()
        self.client.set_terminated(self.run_id, status=status)


# ------------------------------------------------------------------------------------------------
def _copy_tokenizer(data_dir: str, lang: str, out: Path) -> Path:
    """OUT/tokenizer/: ``vocab_{lang}.json``, ``tokenizer.json`` narrowed to ``lang`` (so that
    ``components.tokenize.load_tokenizer`` loads the folder as it is) and the jieba user
    dictionary in effect (``userdict_zh.txt``): what inference needs."""
    dst = out / "tokenizer"
    dst.mkdir(parents=True, exist_ok=True)
    vocab_uri = storage.join(data_dir, f"vocab_{lang}.json")
    try:
        (dst / f"vocab_{lang}.json").write_bytes(storage.read_bytes(vocab_uri))
    except FileNotFoundError:
        raise FileNotFoundError(f"{vocab_uri}: no vocabulary for language {lang!r} (was "
                                "tokenize run with this language?)") from None
    cfg_uri = storage.join(data_dir, "tokenizer.json")
    try:
        cfg = json.loads(storage.read_bytes(cfg_uri).decode("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{cfg_uri}: no such file (the tokenize step writes it; "
                                "inference needs it)") from None
    if lang not in cfg.get("langs", []):
        raise ValueError(f"{cfg_uri}: lists languages {cfg.get('langs')}, not {lang!r}")
    for key, value in list(cfg.items()):
        # per-language sections ({"zh": ..., "en": ...}) keep only this language
        if isinstance(value, dict) and value and set(value) <= {"zh", "en"}:
            cfg[key] = {lang: value[lang]} if lang in value else {}
    cfg["langs"] = [lang]
    (dst / "tokenizer.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False,
                                                   sort_keys=True), encoding="utf-8")
    try:
        (dst / "userdict_zh.txt").write_bytes(
            storage.read_bytes(storage.join(data_dir, "userdict_zh.txt")))
    except FileNotFoundError:
        if lang == "zh":
            raise FileNotFoundError(f"{data_dir}/userdict_zh.txt: no such file (the tokenize "
                                    "step writes the jieba user dictionary in effect; Chinese "
                                    "inference needs it)") from None
    return dst


def _load_embeddings(data_dir: str, lang: str) -> np.ndarray | None:
    import io

    uri = storage.join(data_dir, f"embeddings_{lang}.npy")
    try:
        raw = storage.read_bytes(uri)
    except FileNotFoundError:
        return None
    return np.load(io.BytesIO(raw), allow_pickle=False)


@dataclass
class _Val:
    overall_iou: float
    mean_iou: float
    prec: dict[int, float]
    n: int

    def metrics(self, prefix: str = "val") -> dict[str, float]:
        d = {f"{prefix}_overall_iou": self.overall_iou, f"{prefix}_mean_iou": self.mean_iou}
        d.update({f"{prefix}_prec_{p}": v for p, v in self.prec.items()})
        return d


def validate(model, ds, dist: _Dist, device, batch_images: int, max_images: int | None,
             amp: bool) -> _Val:
    """Overall IoU (sum I / sum U), mean IoU and Precision@X at the model's input resolution,
    threshold 0.5 on the sigmoid (logit > 0); images sharded over ranks, sums all-reduced."""
    import torch

    from components.refdata import collate_grouped
    from model import autocast_context

    n_img = len(ds) if max_images is None else min(len(ds), int(max_images))
    mine = list(range(dist.rank, n_img, dist.world))
    pcts = (50, 60, 70, 80, 90)
    acc = torch.zeros(4 + len(pcts), dtype=torch.float64)  # I, U, sum IoU, n, hits...
    was = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(mine), batch_images):
            b = collate_grouped([ds[j] for j in mine[i:i + batch_images]])
            images = b["images"].to(device, non_blocking=True)
            if device.type == "cuda" and model.cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast_context(device, amp):
                logits = model(images, b["tokens"].to(device), b["lengths"].to(device),
                               b["image_index"].to(device))["logits"]
            pred = (logits.float() > 0).flatten(1).cpu()
            gt = (b["masks"] > 0.5).flatten(1)
            inter = (pred & gt).sum(1).to(torch.float64)
            union = (pred | gt).sum(1).to(torch.float64)
            iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
            acc[0] += inter.sum()
            acc[1] += union.sum()
            acc[2] += iou.sum()
            acc[3] += len(iou)
            for q, p in enumerate(pcts):
                acc[4 + q] += ((100 * inter > p * union) | (union == 0)).sum()
    if was:
        model.train()
    acc = dist.all_reduce(acc.to(device)).cpu()
    n = int(acc[3])
    return _Val(
        overall_iou=float(acc[0] / acc[1]) if acc[1] > 0 else 1.0,
        mean_iou=float(acc[2] / n) if n else float("nan"),
        prec={p: (float(acc[4 + q] / n) if n else float("nan")) for q, p in enumerate(pcts)},
        n=n,
    )


# ------------------------------------------------------------------------------------------------
def train(
    data_dir: str,
    lang: str,
    config: str = "small",
    out_dir: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
    quiet: bool = False,
    val_every: int | None = None,
    deterministic: bool = False,
) -> dict[str, Any]:
    """Train (or resume) one language's model into ``out_dir``; returns the summary dict."""
    if lang not in ("zh", "en"):
        raise ValueError(f"lang must be 'zh' or 'en', got {lang!r}")
    if not out_dir:
        raise ValueError("out_dir is required")
    if storage.is_s3(str(out_dir)):
        raise ValueError(f"--out {out_dir}: give a local folder (artifacts reach S3 via MLflow)")
    t_start = time.perf_counter()
    mcfg, tcfg, explicit = resolve_config(config, overrides, seed, steps, val_every, deterministic)
    if tcfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    dist = _Dist()
    device = _select_device(dist)
    dist.setup(device.type)
    try:
        return _train(data_dir, lang, str(config), Path(out_dir), seed, mcfg, tcfg, explicit,
                      tracking_uri, quiet, dist, device, t_start, torch)
    finally:
        dist.teardown()


def _train(data_dir, lang, config_name, out: Path, seed, mcfg, tcfg, explicit, tracking_uri,
           quiet, dist: _Dist, device, t_start, torch) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from components.refdata import GroupedSampler, RefDataset, collate_grouped
    from model import autocast_context, build_model, save_checkpoint, segmentation_loss

    data_dir = str(data_dir)
    if tcfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "cpu" and dist.enabled:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(
            os.environ.get("LOCAL_WORLD_SIZE", dist.world))))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

    # ---- data ----------------------------------------------------------------------------------
    vocab_uri = storage.join(data_dir, f"vocab_{lang}.json")
    try:
        vocab = json.loads(storage.read_bytes(vocab_uri).decode("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{vocab_uri}: no vocabulary for language {lang!r} (was tokenize "
                                "run with this language?)") from None
    emb = _load_embeddings(data_dir, lang) if tcfg.pretrained_embeddings else None
    emb_note = "random"
    if emb is not None:
        if emb.shape[0] != len(vocab):
            raise ValueError(f"{data_dir}/embeddings_{lang}.npy has {emb.shape[0]} rows but "
                             f"vocab_{lang}.json has {len(vocab)} tokens")
        if int(emb.shape[1]) != mcfg.embed_dim:
            if "embed_dim" in explicit:
                emb, emb_note = None, f"random (embed_dim {mcfg.embed_dim} set explicitly)"
            else:
                mcfg = mcfg.replace(embed_dim=int(emb.shape[1]))
        if emb is not None:
            emb_note = f"embeddings_{lang}.npy ({emb.shape[1]}-d)"
    fingerprint = data_fingerprint(data_dir, lang)
    cache_dir = str(out / "cache")
    train_ds = RefDataset(data_dir, lang, "train", mcfg.input_size, cache_dir=cache_dir,
                          memory_cache=tcfg.memory_cache)
    if len(train_ds) == 0:
        raise ValueError(f"{data_dir}: split 'train' has no samples for language {lang!r}")
    try:
        val_ds = RefDataset(data_dir, lang, tcfg.val_split, mcfg.input_size, cache_dir=cache_dir,
                            memory_cache=tcfg.memory_cache)
        if len(val_ds) == 0:
            val_ds = None
    except FileNotFoundError:
        val_ds = None
    sampler = GroupedSampler(train_ds.expression_counts(), shuffle=True, seed=seed,
                             max_expressions=tcfg.max_expressions_per_image,
                             num_replicas=dist.world, rank=dist.rank,
                             batch_size=tcfg.batch_images, drop_last=True)
    per_epoch = sampler.batches_per_epoch()

    # ---- model / optimiser ---------------------------------------------------------------------
    from model import prepare_model

    model = build_model(mcfg, len(vocab), emb)
    model = prepare_model(model, device)
    if (dist.enabled and device.type == "cuda" and tcfg.sync_bn
            and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=tcfg.lr, betas=tuple(tcfg.adam_betas),
                           weight_decay=tcfg.weight_decay)
    total = int(tcfg.steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(
        s, total, int(tcfg.warmup_steps), float(tcfg.lr_power), float(tcfg.lr_end_factor)))
    net = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    # ---- resume --------------------------------------------------------------------------------
    resolved = {"model": mcfg.to_dict(), "train": tcfg.to_dict()}
    resume_path = out / "resume.pt"
    step, items_done, epoch = 0, 0, 0
    best, best_step, run_id, elapsed_before = -1.0, -1, None, 0.0
    history: list[dict[str, Any]] = []
    if resume_path.exists():
        st = load_resume(str(resume_path))
        diff = [f"{sec}.{k}" for sec in ("model", "train") for k in resolved[sec]
                if st["config"][sec].get(k) != resolved[sec][k]]
        if diff:
            raise ValueError(f"{resume_path} was written with a different configuration "
                             f"({', '.join(diff[:8])}); use a fresh --out or delete it")
        if st["data_fingerprint"] != fingerprint or st["lang"] != lang:
            raise ValueError(f"{resume_path} belongs to another data dir or language "
                             f"(fingerprint {st['data_fingerprint'][:12]}, lang {st['lang']})")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        _set_rng_state(st["rng"])
        step, epoch, items_done = int(st["step"]), int(st["epoch"]), int(st["items_in_epoch"])
        best, best_step = float(st["best_val"]), int(st["best_step"])
        run_id, elapsed_before = st["run_id"], float(st["elapsed_s"])
        history = list(st["history"])
    if dist.enabled:
        # every rank must resume from the same state: under multi-node torchrun OUT has to be a
        # folder that all nodes see (a shared volume); otherwise the ranks would silently diverge
        step0 = dist.broadcast_object(step)
        bad = dist.all_reduce(torch.tensor([float(step != step0)], device=device))
        if float(bad[0]) > 0:
            raise RuntimeError(f"rank {dist.rank}: {resume_path} gives step {step} but rank 0 "
                               f"resumes from step {step0}; under multi-node torchrun --out must "
                               "be a folder shared by all nodes")
    pos = items_done // (tcfg.batch_images * dist.world)
    if pos >= per_epoch:
        epoch, pos = epoch + 1, 0

    # ---- tracking ------------------------------------------------------------------------------
    tracker = _Tracker(dist.main, tracking_uri)
    resumed = run_id is not None
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        tok_dir = _copy_tokenizer(data_dir, lang, out)
        run_id = tracker.start(run_id, run_name=f"train-{lang}-{mcfg.name}-s{seed}")
        (out / "run_id.txt").write_text(run_id + "\n")
        dev_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                    else f"cpu ({os.cpu_count()} cores)")
        if not resumed:
            p = {**flatten("model", resolved["model"]), **flatten("train", resolved["train"])}
            p.update(config=config_name, lang=lang, seed=str(seed), world_size=str(dist.world),
                     data_dir=data_dir, data_fingerprint=fingerprint, git_commit=git_commit(),
                     vocab_size=str(len(vocab)), embeddings=emb_note,
                     train_images=str(len(train_ds)),
                     train_expressions=str(train_ds.num_expressions),
                     val_images=str(len(val_ds) if val_ds is not None else 0))
            tracker.params(p)
        tracker.tags({"device": dev_name, "device_type": device.type, "lang": lang,
                      "world_size": str(dist.world), "torch": torch.__version__,
                      "refseg.step": "train", "data_fingerprint": fingerprint})
    run_id = dist.broadcast_object(run_id)

    # ---- signals -------------------------------------------------------------------------------
    stop = {"flag": False}

    def on_term(signum, frame):  # noqa: ARG001
        stop["flag"] = True

    old_handler = None
    try:
        old_handler = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: no handler, no graceful stop
        old_handler = None

    amp = bool(mcfg.amp_bf16)
    extra_base = {"lang": lang, "vocab": f"vocab_{lang}.json", "data_fingerprint": fingerprint}

    def save_resume() -> None:
        if not dist.main:
            return
        _atomic_save({
            "format": RESUME_FORMAT, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "rng": _rng_state(), "step": step, "epoch": epoch,
            "items_in_epoch": pos * tcfg.batch_images * dist.world, "run_id": run_id,
            "best_val": best, "best_step": best_step, "config": resolved,
            "data_fingerprint": fingerprint, "lang": lang, "world_size": dist.world,
            "elapsed_s": elapsed_before + time.perf_counter() - t_start, "history": history,
        }, str(resume_path))

    def make_loader(ep: int, start_batch: int):
        sampler.set_epoch(ep)
        sampler.set_start(start_batch * tcfg.batch_images)
        nw = int(tcfg.num_workers)
        return iter(DataLoader(train_ds, batch_size=tcfg.batch_images, sampler=sampler,
                               collate_fn=collate_grouped, num_workers=nw, drop_last=True,
                               pin_memory=device.type == "cuda",
                               prefetch_factor=4 if nw else None))

    bar = None
    if dist.main and not quiet:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, desc=f"train {lang}", unit="step",
                   file=sys.stderr, dynamic_ncols=True)
    status = "FINISHED"
    interrupted = False
    window_expr, window_t, window_loss, window_n = 0, time.perf_counter(), 0.0, 0
    last_val: _Val | None = None
    train_seconds = 0.0
    val_seconds = 0.0
    expr_seen = 0
    setup_seconds = time.perf_counter() - t_start
    loss_value = float("nan")
    try:
        loader = make_loader(epoch, pos) if step < total else None
        while step < total:
            try:
                batch = next(loader)
            except StopIteration:
                epoch, pos = epoch + 1, 0
                loader = make_loader(epoch, 0)
                continue
            t0 = time.perf_counter()
            images = batch["images"].to(device, non_blocking=True)
            if device.type == "cuda" and mcfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            masks = batch["masks"].to(device, non_blocking=True)
            n_local = int(batch["tokens"].shape[0])
            with autocast_context(device, amp):
                logits = net(images, batch["tokens"].to(device), batch["lengths"].to(device),
                             batch["image_index"].to(device))["logits"]
            loss = segmentation_loss(logits, masks)
            if tcfg.debug_nan_at_step is not None and step + 1 == int(tcfg.debug_nan_at_step):
                loss = loss * float("nan")
            # one all-reduce: global expression count, non-finite flag, stop request
            flags = torch.tensor([float(n_local), 0.0 if torch.isfinite(loss) else 1.0,
                                  1.0 if stop["flag"] else 0.0], dtype=torch.float64,
                                 device=device)
            flags = dist.all_reduce(flags)
            n_global = int(flags[0])
            if flags[1] > 0:
                val = float(loss.detach())
                what = ("nan" if math.isnan(val) else "inf" if math.isinf(val)
                        else "non-finite on another rank")
                raise NonFiniteLossError(
                    f"loss is {what} at step {step + 1} (lr {sched.get_last_lr()[0]:.3g}); stopped before the "
                    f"optimiser step, no weights of this step were saved (last good state: "
                    f"{resume_path} at step {_saved_step(resume_path)}); lower the learning rate "
                    f"(--set lr=...) or check the data")
            if dist.enabled:
                (loss * (n_local * dist.world / max(n_global, 1))).backward()
            else:
                loss.backward()
            if tcfg.grad_clip > 0:
                gnorm = torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
            else:
                gnorm = torch.linalg.vector_norm(torch.stack(
                    [torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None]))
            if not torch.isfinite(gnorm):
                raise NonFiniteLossError(
                    f"gradient norm is {float(gnorm)} at step {step + 1} (loss "
                    f"{float(loss.detach()):.4g}); stopped before the optimiser step, no weights "
                    f"of this step were saved; lower the learning rate (--set lr=...)")
            opt.step()
            opt.zero_grad(set_to_none=True)
            lr_now = sched.get_last_lr()[0]
            sched.step()
            step += 1
            pos += 1
            loss_value = float(loss.detach())
            train_seconds += time.perf_counter() - t0
            window_expr += n_global
            expr_seen += n_global
            window_loss += loss_value
            window_n += 1
            tracker.metrics({"loss": loss_value, "lr": lr_now,
                             "grad_norm": float(gnorm)}, step)
            if step % tcfg.log_every == 0 or step == total:
                dt = max(time.perf_counter() - window_t, 1e-9)
                thr = window_expr / dt
                tracker.metrics({"throughput_expr_per_s": thr}, step)
                tracker.flush()
                if bar is not None:
                    bar.set_postfix(loss=f"{window_loss / window_n:.4f}", expr_s=f"{thr:.1f}",
                                    best=f"{max(best, 0):.3f}")
                window_expr, window_t, window_loss, window_n = 0, time.perf_counter(), 0.0, 0
            if bar is not None:
                bar.update(1)

            if val_ds is not None and (step % tcfg.val_every == 0 or step == total):
                t_val = time.perf_counter()
                v = validate(model, val_ds, dist, device, tcfg.val_batch_images,
                             tcfg.val_max_images, amp)
                val_seconds += time.perf_counter() - t_val
                last_val = v
                improved = v.overall_iou > best
                if improved:
                    best, best_step = v.overall_iou, step
                history.append({"step": step, **v.metrics()})
                if dist.main:
                    tracker.metrics({**v.metrics(), "best_val_overall_iou": best}, step)
                    tracker.flush()
                    if improved:
                        save_checkpoint(str(out / "checkpoints" / "best.pt"), model, mcfg,
                                        {**extra_base, "step": step,
                                         "val_overall_iou": v.overall_iou})
                    msg = (f"[train {lang}] step {step}/{total} loss {loss_value:.4f} "
                           f"val_overall_iou {v.overall_iou:.4f} val_mean_iou {v.mean_iou:.4f} "
                           f"best {best:.4f}@{best_step} "
                           f"({elapsed_before + time.perf_counter() - t_start:.0f} s)")
                    if quiet:
                        print(msg, flush=True)
                    elif bar is not None:
                        bar.write(msg)
                window_t = time.perf_counter()  # validation time is not training throughput
            if pos >= per_epoch:
                epoch, pos = epoch + 1, 0
                loader = make_loader(epoch, 0)
            if step % tcfg.resume_every == 0 and step < total:
                save_resume()
            if stop["flag"] or flags[2] > 0:
                # another rank (or this one) was asked to stop: all stop after the same step
                interrupted = True
                save_resume()
                status = "KILLED"
                if dist.main:
                    print(f"[train {lang}] SIGTERM: state saved to {resume_path} at step {step}; "
                          "run the same command again to resume", file=sys.stderr, flush=True)
                break
    except NonFiniteLossError:
        status = "FAILED"
        if dist.main:
            tracker.tags({"failure": "non-finite loss"})
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if bar is not None:
            bar.close()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
        if status != "FINISHED":
            try:
                tracker.end(status)
            except Exception as exc:  # noqa: BLE001 - never hide the original error
                print(f"[train {lang}] could not close the MLflow run: {exc}", file=sys.stderr)

    # ---- finish ---------------------------------------------------------------------------------
    summary_path = out / "summary.json"
    if not interrupted:
        save_resume()
        if dist.main:
            last_iou = last_val.overall_iou if last_val is not None else None
            save_checkpoint(str(out / "checkpoints" / "last.pt"), model, mcfg,
                            {**extra_base, "step": step, "val_overall_iou": last_iou})
            if val_ds is None or not (out / "checkpoints" / "best.pt").exists():
                # no validation split: the last weights are the best we know
                save_checkpoint(str(out / "checkpoints" / "best.pt"), model, mcfg,
                                {**extra_base, "step": step, "val_overall_iou": last_iou})
    summary = {
        "run_id": run_id, "lang": lang, "config": config_name, "seed": seed,
        "steps": step, "total_steps": total, "interrupted": interrupted,
        "best_val_overall_iou": best if best >= 0 else None, "best_step": best_step,
        "last_val": last_val.metrics() if last_val is not None else None,
        "world_size": dist.world, "device": device.type, "data_fingerprint": fingerprint,
        "train_images": len(train_ds), "train_expressions": train_ds.num_expressions,
        "timings": {"total_s": round(elapsed_before + time.perf_counter() - t_start, 2),
                    "this_process_s": round(time.perf_counter() - t_start, 2),
                    "setup_s": round(setup_seconds, 2),
                    "train_steps_s": round(train_seconds, 2),
                    "validation_s": round(val_seconds, 2),
                    "expressions_per_s": round(
                        expr_seen / train_seconds, 2) if train_seconds > 0 else None},
        "history": history, "out_dir": str(out),
        "model_config": resolved["model"], "train_config": resolved["train"],
    }
    if dist.main:
        summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True))
        if not interrupted:
            tracker.artifact(str(out / "checkpoints" / "best.pt"), "checkpoints")
            tracker.artifact(str(tok_dir), "tokenizer")
            tracker.artifact(str(summary_path), "train")
            if best >= 0:
                tracker.metrics({"best_val_overall_iou": best}, step)
            tracker.end("FINISHED")
    dist.barrier()
    return summary


def _saved_step(path: Path) -> str:
    if not path.exists():
        return "none"
    try:
        return str(int(load_resume(str(path))["step"]))
    except (ValueError, KeyError):
        return "unreadable"


# ------------------------------------------------------------------------------------------------
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Train one language's LE/LA/CLAF model on a tokenize output folder, tracked in MLflow.\n"
        "The same command runs one process or many under torchrun (DDP: NCCL on GPU, gloo on "
        "CPU).\n"
        "Writes OUT/checkpoints/{best,last}.pt, OUT/resume.pt, OUT/tokenizer/, OUT/summary.json,"
        " OUT/run_id.txt.\n"
        "SIGTERM saves OUT/resume.pt and exits 143; running the same command with the same --out"
        "\nresumes from it and continues the same MLflow run. A NaN loss stops with exit code 1."
        "\n\nexamples:\n"
        "  refseg train --data runs/tok --lang zh --config small --out runs/zh\n"
        "  refseg train --data runs/tok --lang en --config small --out runs/en --set lr=1e-3 "
        "--steps 2000\n"
        "  refseg train --data runs/tok --lang en --config paper --out runs/en \\\n"
        "      --set backbone_weights=resnet101.pth          # on a GPU\n"
        "  torchrun --standalone --nproc_per_node=4 -m pipelines.cli train --data D --lang en "
        "\\\n      --config paper --out runs/en                  # 4 processes (DDP)")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--data", required=True, help="tokenize output folder (local or s3://)")
    p.add_argument("--lang", required=True, choices=("zh", "en"))
    p.add_argument("--config", default="small",
                   help="preset (small, paper, preset:ablation_row) or YAML file (default small)")
    p.add_argument("--out", required=True, help="output folder (local)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model or training field, e.g. --set lr=1e-3 --set "
                        "input_size=96 (repeatable)")
    p.add_argument("--val-every", type=int, default=None, help="validate every N steps")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (bit-identical reruns on CPU)")
    p.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI or "
                   "sqlite:///<cwd>/mlflow.db")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (loss, expressions/s, best IoU); one line per validation")


def run(args) -> int:
    try:
        s = train(args.data, args.lang, config=args.config, out_dir=args.out, steps=args.steps,
                  seed=args.seed, overrides=parse_sets(args.set), tracking_uri=args.tracking_uri,
                  quiet=args.quiet, val_every=args.val_every, deterministic=args.deterministic)
    except NonFiniteLossError as exc:
        print(f"refseg train: NonFiniteLossError: {exc}", file=sys.stderr)
        return 1
    if s["interrupted"]:
        return EXIT_PREEMPTED
    if int(os.environ.get("RANK", "0")) == 0:
        best = s["best_val_overall_iou"]
        print(f"trained {s['lang']} for {s['steps']} steps in {s['timings']['total_s']} s; best val "
              f"overall IoU {best if best is None else round(best, 4)} at step {s['best_step']}; "
              f"run {s['run_id']}; {args.out}/checkpoints/best.pt")
    return 0
