"""The training half of a run's configuration and the one loader of both halves.

A run is configured by a config (``configs/``: a preset, ``preset:row``, ``ablation/<row>`` or a
YAML file, each with ``model:`` and ``train:`` sections) plus ``--set key=value`` overrides, which
go to whichever of :class:`model.ModelConfig` and :class:`TrainConfig` knows the key.
:func:`load_run_config` returns both configs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from components.data.names import RULE as SPLIT_RULE
from components.data.names import is_split_name
from components.errors import ConfigError


@dataclass
class TrainConfig:
    """Training fields (not architecture). Every field can be set with ``--set key=value``.
    The defaults are the paper's training (configs/paper.yaml), except ``batching``, whose default
    ``image`` keeps the grouped batches of the presets that do not name it (paper.yaml sets
    ``pair``). ``val_split`` is an old name of ``select_split`` and still accepted."""

    steps: int = 200_000
    lr: float = 2.5e-4  # paper
    lr_power: float = 0.9  # polynomial decay: lr * (1 - t/T)^power after warm-up
    lr_end_factor: float = 0.0  # floor of the decay as a share of lr
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 10.0  # max global gradient norm; 0 = off
    batching: str = "image"  # "image": an image with its expressions per item; "pair": one
    # image-expression pair per item (the paper's)
    batch_size: int = 1  # batching: pair: pairs per process per step
    batch_images: int = 1  # batching: image: images per process per step (with their expressions)
    hflip: float = 0.0  # share of training items flipped left-right, left/right words swapped
    vflip: float = 0.0  # share flipped top-bottom, top/bottom words swapped
    zoom_out: float = 0.0  # largest shrink of a training image, placed anywhere in its region
    max_expressions_per_image: int | None = None  # batching: image: None = all, else chunks
    num_workers: int = 4  # DataLoader worker processes (0 = in the main process)
    memory_cache: bool = True  # keep decoded, resized images in memory (per worker)
    val_every: int = 5000
    select_split: str | None = "val"  # the split validated on during training; selects best.pt
    # (null = train without validation, explicitly; a missing split is an error)
    val_max_images: int | None = None  # None = the whole split
    val_batch_images: int = 8
    resume_every: int = 1000
    log_every: int = 20  # MLflow metric flush and progress update period (steps)
    pretrained_embeddings: bool = True  # embeddings_{lang}.npy from tokenize (sets embed_dim);
    # a missing file is an error; false = random embeddings, explicitly
    sync_bn: bool = True  # SyncBatchNorm under DDP on GPU (CPU/gloo has none)
    deterministic: bool = False
    debug_nan_at_step: int | None = None  # test hook: multiply the loss by NaN at this step

    def __post_init__(self) -> None:
        from model.config import check_field_types

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"train config: {msg}")

        check_field_types(self, "train config")

        need(int(self.steps) >= 1, f"steps must be >= 1, got {self.steps}")
        need(float(self.lr) > 0, f"lr must be > 0, got {self.lr}")
        need(self.batching in BATCHING, f"batching must be one of {list(BATCHING)}, got "
             f"{self.batching!r}")
        need(int(self.batch_size) >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(int(self.batch_images) >= 1, f"batch_images must be >= 1, got {self.batch_images}")
        need(self.max_expressions_per_image is None or int(self.max_expressions_per_image) >= 1,
             "max_expressions_per_image must be >= 1 or null")
        need(self.batching == "image" or self.max_expressions_per_image is None,
             "max_expressions_per_image applies to batching: image only (a pair has one "
             "expression); set it to null")
        need(self.select_split is None or is_split_name(self.select_split),
             f"select_split {self.select_split!r} is not a valid split name: use {SPLIT_RULE}")
        need(int(self.num_workers) >= 0, "num_workers must be >= 0")
        need(int(self.val_every) >= 1, "val_every must be >= 1")
        need(int(self.resume_every) >= 1, "resume_every must be >= 1")
        need(int(self.log_every) >= 1, "log_every must be >= 1")
        need(0.0 <= float(self.hflip) <= 1.0, f"hflip must lie in [0, 1], got {self.hflip}")
        need(0.0 <= float(self.vflip) <= 1.0, f"vflip must lie in [0, 1], got {self.vflip}")
        need(0.0 <= float(self.zoom_out) < 1.0, f"zoom_out must lie in [0, 1), got "
             f"{self.zoom_out}")
        need(float(self.grad_clip) >= 0, "grad_clip must be >= 0 (0 = off)")
        need(0 <= float(self.lr_end_factor) <= 1, "lr_end_factor must lie in [0, 1]")
        need(len(self.adam_betas) == 2, "adam_betas must be two numbers")

    @property
    def augmentation(self) -> dict[str, float]:
        """The sampler's augmentation arguments (components/data/augment.py)."""
        return {"hflip": float(self.hflip), "vflip": float(self.vflip),
                "zoom_out": float(self.zoom_out)}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def val_split(self) -> str | None:
        """The old name of ``select_split``."""
        return self.select_split

    @property
    def per_step(self) -> int:
        """Items per process per step: pairs (``batch_size``) or images (``batch_images``)."""
        return int(self.batch_size if self.batching == "pair" else self.batch_images)


BATCHING = ("image", "pair")
# old training keys still accepted in YAML and --set, and the field each one now sets
ALIASES = {"val_split": "select_split"}
TRAIN_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig)) | frozenset(ALIASES)


def _unalias(train: dict[str, Any], config: str) -> dict[str, Any]:
    """``val_split`` -> ``select_split``; both given with different values is an error."""
    out = dict(train)
    for old, new in ALIASES.items():
        if old in out:
            value = out.pop(old)
            if new in out and out[new] != value:
                raise ConfigError(f"{config}: {old} ({value!r}) is the old name of {new} "
                                  f"({out[new]!r}); set only {new}")
            out[new] = value
    return out


def _coerce(value: str) -> Any:
    """``--set`` value: YAML scalar/list syntax (``1e-3``, ``true``, ``null``, ``[1, 2]``)."""
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def parse_sets(pairs: list[str] | None) -> dict[str, Any]:
    """``["lr=1e-3", "levels=[res3]"]`` -> ``{"lr": 0.001, "levels": ["res3"]}``."""
    out: dict[str, Any] = {}
    for p in pairs or []:
        key, sep, value = p.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {p!r}: expected key=value")
        out[key.strip()] = _coerce(value.strip())
    return out


@contextmanager
def _readable(config: str) -> Iterator[None]:
    """A config file (or a file of its ``base:`` chain) that is not UTF-8 text is a ConfigError
    naming the config, not a traceback."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {config}: not UTF-8 text (byte {exc.start}: {exc.reason}); "
                          "a config is a YAML file") from None


def load_run_config(config: str, overrides: dict[str, Any] | None = None, seed: int = 0,
                    steps: int | None = None, val_every: int | None = None,
                    deterministic: bool = False):
    """``(ModelConfig, TrainConfig, explicit)`` of a run: the config's sections, then the
    overrides, then ``steps``/``val_every``/``deterministic`` when given. ``explicit`` names the
    model fields the user set (a YAML file of theirs, ``--set``, the seed): the tokenize step's
    word vectors set ``embed_dim`` unless it is explicit."""
    import configs
    from model.config import ModelConfig, load_config

    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    config = str(config)
    with _readable(config):
        sections = configs.read(config, train_keys=TRAIN_FIELDS)
        user_file = configs.user_file(config)
        own = set() if user_file is None else set(
            configs.read_file(user_file, train_keys=TRAIN_FIELDS)["model"])
    model_over: dict[str, Any] = {}
    train_over: dict[str, Any] = _unalias(sections["train"], config)
    for section, what, known in (("model", "ModelConfig", model_fields),
                                 ("train", "training", TRAIN_FIELDS)):
        odd = [k for k in sections[section] if not isinstance(k, str)]
        if odd:
            raise ConfigError(f"{config}: {what} keys are names, got {odd[0]!r}")
        bad = sorted(set(sections[section]) - known)
        if bad:
            raise ConfigError(f"{config}: unknown {what} keys {bad}; known: {sorted(known)}")
    for k, v in _unalias(overrides or {}, "--set").items():
        (train_over if k in TRAIN_FIELDS else model_over)[k] = v
    explicit = own | set(model_over) | {"seed"}
    if "seed" not in own and "seed" not in model_over:
        model_over["seed"] = int(seed)
    model_cfg = load_config(ModelConfig(), {**sections["model"], **model_over})
    if steps is not None:
        train_over["steps"] = int(steps)
    if val_every is not None:
        train_over["val_every"] = int(val_every)
    if deterministic:
        train_over["deterministic"] = True
    try:
        train_cfg = TrainConfig(**train_over)
    except TypeError as exc:
        raise ConfigError(f"train config: {exc}") from None
    return model_cfg, train_cfg, explicit
