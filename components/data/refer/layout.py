"""The refer toolkit's files for one dataset and split_by::

    <refer_root>/<dataset>/refs(<split_by>).p   pickled list of refs (read with safe_pickle only)
    <refer_root>/<dataset>/instances.json       COCO images / annotations / categories
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from components.data import storage
from components.data.refer.values import keys_to_str
from components.data.safe_pickle import safe_loads
from components.errors import InputError

VALID_SPLIT_BY: dict[str, tuple[str, ...]] = {
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc",),
    "refcocog": ("umd", "google"),
    "refclef": ("berkeley", "unc"),
}


class ReferImportError(InputError):
    """The input as a whole cannot be imported (bad dataset/split_by, unreadable files)."""


def check_split_by(dataset: str, split_by: str) -> None:
    valid = ", ".join(f"{d}/{s}" for d, ss in VALID_SPLIT_BY.items() for s in ss)
    if dataset not in VALID_SPLIT_BY:
        raise ReferImportError(f"unknown dataset {dataset!r}; valid dataset/split_by pairs: {valid}")
    if split_by not in VALID_SPLIT_BY[dataset]:
        raise ReferImportError(
            f"{dataset} has no split_by {split_by!r}; valid dataset/split_by pairs: {valid}"
        )


@dataclass
class ReferSource:
    """One dataset/split_by as read: the refs (str keys, values as stored) and instances.json's
    images, annotations and category names by id."""

    refs_uri: str
    instances_uri: str
    refs: list
    images: dict[int, dict]
    anns: dict[int, dict]
    cats: dict[int, str]

    @classmethod
    def read(cls, refer_root: str, dataset: str, split_by: str) -> ReferSource:
        """Read the refs pickle (plain data only, see :mod:`components.data.safe_pickle`), then
        instances.json. Raises :class:`ReferImportError` when either is not what it should be."""
        refs_uri = storage.join(refer_root, dataset, f"refs({split_by}).p")
        inst_uri = storage.join(refer_root, dataset, "instances.json")
        refs = keys_to_str(safe_loads(storage.read_bytes(refs_uri), source=refs_uri))
        if not isinstance(refs, list):
            raise ReferImportError(f"{refs_uri}: expected a list of refs, got {type(refs).__name__}")
        try:
            inst = json.loads(storage.read_bytes(inst_uri))
            images = {int(im["id"]): im for im in inst["images"]}
            anns = {int(a["id"]): a for a in inst["annotations"]}
            cats = {int(c["id"]): str(c["name"]) for c in inst.get("categories", [])}
        except (ValueError, KeyError, TypeError) as exc:
            raise ReferImportError(f"{inst_uri}: not a COCO instances file ({exc!r})") from None
        return cls(refs_uri, inst_uri, refs, images, anns, cats)
