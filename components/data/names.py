"""Split names: the one rule for what a split may be called.

A split name becomes part of a path (``shards/<lang>/<split>.npz``), of metric names
(``<split>_overall_iou``) and of MLflow tags, and comes from a user (``--split``, ``--gate-split``,
``select_split``) or from data (a manifest's ``split`` column). It must be letters, digits, ``_``,
``-`` and ``.``, start with a letter or digit, and be at most 64 characters: ``testA``,
``val_2``, ``umd-test``. A gate joins split names with ``+`` (``testA+testB``), so ``+`` is not
part of a name.
"""

from __future__ import annotations

import re

from components.errors import ConfigError

SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RULE = "letters, digits, _ - . (starting with a letter or digit, at most 64 characters)"


def is_split_name(name: object) -> bool:
    return isinstance(name, str) and SPLIT_NAME.fullmatch(name) is not None


def check_split_name(name: object, what: str = "split", error: type[Exception] = ConfigError
                     ) -> str:
    """``name`` when it is a valid split name, else ``error`` (one line naming ``what``)."""
    if not is_split_name(name):
        raise error(f"{what} {name!r} is not a valid split name: use {RULE}")
    return str(name)
