"""Run configurations: one YAML file per preset and one per ablation row, read by :func:`read`.

A config file has a ``model:`` section (fields of ``model.config.ModelConfig``) and a ``train:``
section (fields of ``components.training.config.TrainConfig``); ``base: <config>`` inherits another
config's sections and overrides them key by key. Shipped here::

    paper.yaml     the paper's setting (Section 4.2), for a GPU
    small.yaml     the CPU preset of ``make run``: single level, 96 px, narrow ResNet
    small3.yaml    small with three levels, CLAF and the ConvLSTM
    ablation/<row>.yaml   Table 4's rows (row1_baseline ... row10_full), each on ``base: paper``

A config is named by a shipped name (``small``, ``ablation/row10_full``), by ``<preset>:<row>``
(an ablation row on another preset, e.g. ``small:row1_baseline``), by the path of a YAML file, or
by ``<file.yaml>:<row>`` (a row on the user's file, named ``<file stem>:<row>``).
A user's file may also list fields at the top level, without sections; they go to ``train`` when
the caller names them in ``train_keys`` and to ``model`` otherwise.

This package reads YAML and nothing else: ``model.load_config`` builds the ModelConfig from the
``model`` section and ``components.training.config.load_run_config`` both configs of a run.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from model.errors import ConfigError

HERE = Path(__file__).resolve().parent
ABLATION = "ablation"
SECTIONS = ("model", "train")


def presets() -> list[str]:
    """The shipped presets (``paper``, ``small``, ``small3``)."""
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def ablation_names() -> list[str]:
    """Table 4's rows, ``row1_baseline`` ... ``row10_full`` in row order."""
    rows = [p.stem for p in (HERE / ABLATION).glob("*.yaml")]
    return sorted(rows, key=lambda r: (int(r[3:].split("_")[0]), r))


def is_named(config: str) -> bool:
    """Whether ``config`` names a shipped config (rather than a YAML file of the user's)."""
    return _named(str(config)) is not None


def user_file(config: str) -> str | None:
    """The user's YAML file a config names (the file, or the file of ``<file.yaml>:<row>``);
    None for a shipped config."""
    config = str(config)
    if is_named(config):
        return None
    on_file = _row_on_file(config)
    return on_file[0] if on_file else config


def _row_on_file(config: str) -> tuple[str, str] | None:
    """(file, row) for ``<file.yaml>:<row>`` when the file exists and the row is known."""
    path, sep, row = config.rpartition(":")
    if sep and row in ablation_names() and os.path.isfile(path):
        return path, row
    return None


def read(config: str, train_keys: Collection[str] = ()) -> dict[str, dict[str, Any]]:
    """``{"model": {...}, "train": {...}}`` of a config, its ``base:`` chain resolved (the file's
    own keys win). ``<preset>:<row>`` is the row's model section on the preset, named
    ``<preset>:<row>``; so is ``ablation/<row>`` (on its base, ``paper``)."""
    return _read(str(config), train_keys, seen=())


def read_file(path: str, train_keys: Collection[str] = ()) -> dict[str, Any]:
    """One file's own ``model``/``train`` sections and its ``base`` (None when it has none)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config YAML must be a mapping")
    out: dict[str, Any] = {"base": data.pop("base", None), "model": {}, "train": {}}
    for name in SECTIONS:
        section = data.pop(name, None) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: '{name}' must be a mapping of {name} fields")
        out[name] = section
    for key, value in data.items():  # top-level fields of a user's file
        out["train" if key in train_keys else "model"].setdefault(key, value)
    return out


def ablation_rows() -> dict[str, dict[str, Any]]:
    """Each ablation row's own model fields (what the row changes on its preset)."""
    return {row: read_file(str(HERE / ABLATION / f"{row}.yaml"))["model"]
            for row in ablation_names()}


# ------------------------------------------------------------------------------------------------
def _named(config: str) -> tuple[str, str | None] | None:
    """(preset, row) for a shipped name: ``small`` -> (small, None), ``small:row1_baseline`` ->
    (small, row1_baseline), ``ablation/row1_baseline`` -> (None, row1_baseline) as (base, row)."""
    preset, sep, row = config.partition(":")
    if preset in presets():
        if sep and row not in ablation_names():
            raise ConfigError(f"unknown ablation row {row!r}; known: {ablation_names()}")
        return preset, (row if sep else None)
    head, slash, tail = config.partition("/")
    if head == ABLATION and slash and tail in ablation_names():
        return "", tail
    return None


def _read(config: str, train_keys: Collection[str], seen: tuple[str, ...]):
    if config in seen:
        raise ConfigError(f"config {config!r}: 'base' chain loops ({' -> '.join(seen)})")
    seen = (*seen, config)
    named = _named(config)
    if named is not None:
        preset, row = named
        if row is None:
            return _resolve(read_file(str(HERE / f"{preset}.yaml"), train_keys), train_keys, seen,
                            here=HERE)
        own = read_file(str(HERE / ABLATION / f"{row}.yaml"), train_keys)
        preset = preset or str(own["base"])
        out = _read(preset, train_keys, seen)
        _merge(out, own)
        out["model"]["name"] = f"{preset}:{row}"
        return out
    on_file = _row_on_file(config)
    if on_file is not None:
        path, row = on_file
        out = _read(path, train_keys, seen)
        _merge(out, read_file(str(HERE / ABLATION / f"{row}.yaml"), train_keys))
        out["model"]["name"] = f"{Path(path).stem}:{row}"
        return out
    if os.path.isfile(config):
        return _resolve(read_file(config, train_keys), train_keys, seen,
                        here=Path(config).resolve().parent)
    raise ConfigError(f"config {config!r} is neither a preset {presets()} (optionally "
                      f"preset:ablation_row, or ablation/<row>) nor an existing YAML file")


def _resolve(own: dict[str, Any], train_keys, seen, here: Path) -> dict[str, dict[str, Any]]:
    base = own["base"]
    if base is None:
        out: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    else:
        base = str(base)
        if _named(base) is None and not os.path.isfile(base) and (here / base).is_file():
            base = str(here / base)  # a base next to the file that names it
        out = _read(base, train_keys, seen)
    _merge(out, own)
    return out


def _merge(out: dict[str, dict[str, Any]], own: dict[str, Any]) -> None:
    for name in SECTIONS:
        out[name].update(own[name])
