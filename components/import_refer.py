"""``refseg data import-refer``: a refer-layout dataset (github.com/lichengunc/refer) and its
Chinese translations -> the bilingual manifest.

Input layout::

    <refer_root>/<dataset>/refs(<split_by>).p   pickled list of refs (read with safe_pickle only)
    <refer_root>/<dataset>/instances.json       COCO images / annotations / categories
    <images_root>/<file_name>                   images, left where they are (local or s3://)
    translations                                 CSV / JSONL / Parquet table: sent_id, text_zh

Output (``out_dir``, local or s3://): ``manifest.parquet`` (one row per kept expression),
``quarantine.parquet`` (kind, record_id, sample_id, code, reason: one row per refused record) and
``summary.json`` (for every kind of record: in = kept + quarantined; ids of unmatched translations,
missing images and untranslated expressions). Nothing disappears silently.

Record kinds: ``image`` (each referenced image is checked once: exists, decodes fully, size matches
instances.json, pixel count under ``max_pixels``, safe file name), ``ref`` (annotation present,
category known, split known, mask inside the image and not empty, image kept), ``sentence`` (the
expression: ref kept, English and Chinese text valid UTF-8, not empty, not punctuation only, has a
translation, sent_id unique) and ``translation`` (a row of the translation table: integer sent_id,
unique, matching an expression). The pieces live in :mod:`components.data.refer`.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from dataclasses import dataclass

from components.data.refer.images import DEFAULT_MAX_PIXELS, check_images
from components.data.refer.layout import (
    VALID_SPLIT_BY,
    ReferImportError,
    ReferSource,
    check_split_by,
)
from components.data.refer.output import ImportRecords, output_uris, write_outputs
from components.data.refer.quarantine import Quarantine
from components.data.refer.records import RowBuilder, parse_refs
from components.data.refer.translations import quarantine_unmatched, read_translations
from components.data.storage import staged_output
from components.logs import get_logger

__all__ = ["DEFAULT_MAX_PIXELS", "TEXT_FIELDS", "VALID_SPLIT_BY", "ImportReferOptions",
           "ReferImportError", "configure_parser", "import_dataset", "import_refer",
           "read_translations", "run"]

TEXT_FIELDS = ("sent", "raw")


@dataclass
class ImportReferOptions:
    """One import: where the refer files, images and translations are, where the output goes,
    and the checks' limits. Checked on creation (:class:`ReferImportError`)."""

    refer_root: str
    dataset: str
    split_by: str
    images_root: str
    translations: str
    out_dir: str
    max_pixels: int = DEFAULT_MAX_PIXELS
    text_field: str = "sent"  # English text: "sent" (cleaned, lower case) or "raw"
    workers: int = 4  # threads for the image checks
    bounds_tolerance: float = 1.0  # pixels a bbox/polygon may reach past the image border

    def __post_init__(self) -> None:
        check_split_by(self.dataset, self.split_by)
        if self.text_field not in TEXT_FIELDS:
            raise ReferImportError(f"text_field must be one of {TEXT_FIELDS}, got {self.text_field!r}")
        if int(self.max_pixels) <= 0:
            raise ReferImportError(f"max_pixels must be positive, got {self.max_pixels}")


def import_dataset(opts: ImportReferOptions) -> dict:
    """Import one refer dataset/split_by with its Chinese translations. Returns the summary dict
    (also written to ``out_dir/summary.json``). See the module docstring for what is checked."""
    log = get_logger("import-refer")
    t0 = time.perf_counter()
    source = ReferSource.read(opts.refer_root, opts.dataset, opts.split_by)
    log.info("%s: %d refs; %s: %d images, %d annotations", source.refs_uri, len(source.refs),
             source.instances_uri, len(source.images), len(source.anns))
    quarantine = Quarantine()
    translations, tr_info = read_translations(opts.translations, quarantine)
    log.info("%s: %d rows, %d translations with a unique sent_id", opts.translations,
             tr_info["rows"], len(translations))

    refs = parse_refs(source.refs)
    images = check_images({i: source.images.get(i) for i in refs.image_ids()}, opts.images_root,
                          int(opts.max_pixels), opts.workers)
    for i, (_uri, problem) in sorted(images.items()):
        if problem is not None:
            quarantine.add("image", i, [problem])
    log.info("%d images checked, %d kept", len(images),
             sum(problem is None for _, problem in images.values()))

    expressions = RowBuilder(
        source, images, translations, tr_info["duplicate_ids"], quarantine, opts.dataset,
        opts.split_by, opts.text_field, opts.bounds_tolerance,
    ).build(refs)
    unmatched = quarantine_unmatched(translations, set(refs.sent_seen), quarantine,
                                     source.refs_uri)
    records = ImportRecords(len(source.refs), refs.n_sentences, images, expressions, tr_info,
                            unmatched, quarantine)
    summary = records.summary({
        "dataset": opts.dataset,
        "split_by": opts.split_by,
        "refer_root": str(opts.refer_root),
        "images_root": str(opts.images_root),
        "translations": str(opts.translations),
        "text_field": opts.text_field,
        "max_pixels": int(opts.max_pixels),
    })
    summary["outputs"] = output_uris(opts.out_dir)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    with staged_output(opts.out_dir, prefix="refer-", step="import-refer") as folder:
        write_outputs(folder, records, summary)
    c = summary["counts"]["sentence"]
    log.info("%d of %d expressions kept (%d quarantined) -> %s", c["kept"], c["in"],
             c["quarantined"], opts.out_dir)
    return summary


def import_refer(
    refer_root: str,
    dataset: str,
    split_by: str,
    images_root: str,
    translations: str,
    out_dir: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    text_field: str = "sent",
    workers: int = 4,
    bounds_tolerance: float = 1.0,
) -> dict:
    """The step in keyword form: builds :class:`ImportReferOptions` and runs
    :func:`import_dataset`."""
    return import_dataset(ImportReferOptions(
        refer_root, dataset, split_by, images_root, translations, out_dir, max_pixels=max_pixels,
        text_field=text_field, workers=workers, bounds_tolerance=bounds_tolerance,
    ))


# ------------------------------------------------------------------------------------------- CLI
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refer-root", required=True,
                   help="folder (or s3:// prefix) holding <dataset>/refs(<split_by>).p and "
                        "<dataset>/instances.json")
    p.add_argument("--dataset", required=True, choices=sorted(VALID_SPLIT_BY))
    p.add_argument("--split-by", required=True,
                   help="unc, google, umd or berkeley (refcoco: unc|google; refcoco+: unc; "
                        "refcocog: umd|google; refclef: berkeley|unc)")
    p.add_argument("--images", required=True,
                   help="image folder or s3:// prefix; instances.json file_name is relative to it")
    p.add_argument("--translations", required=True,
                   help="Chinese translation table (sent_id, text_zh): .csv, .jsonl or .parquet")
    p.add_argument("--out", required=True, help="output folder or s3:// prefix")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse images with more pixels than this (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--text-field", choices=TEXT_FIELDS, default="sent",
                   help="English text: 'sent' (cleaned, lower case) or 'raw' (default sent)")
    p.add_argument("--workers", type=int, default=4, help="threads for image checks (default 4)")
    p.add_argument("--bounds-tolerance", type=float, default=1.0,
                   help="pixels a bbox/polygon may reach past the image border (default 1.0)")


def run(args) -> int:
    opts = ImportReferOptions(
        args.refer_root, args.dataset, args.split_by, args.images, args.translations, args.out,
        max_pixels=args.max_pixels, text_field=args.text_field, workers=args.workers,
        bounds_tolerance=args.bounds_tolerance,
    )
    try:
        s = import_dataset(opts)
    except pickle.UnpicklingError as exc:  # hostile or damaged refs file: one line, no traceback
        print(f"refseg: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    c = s["counts"]
    print(
        f"{s['dataset']}/{s['split_by']}: {c['sentence']['kept']} of {c['sentence']['in']} "
        f"expressions kept ({c['sentence']['quarantined']} quarantined); images "
        f"{c['image']['kept']}/{c['image']['in']}, refs {c['ref']['kept']}/{c['ref']['in']}, "
        f"translations matched {c['translation']['kept']}/{c['translation']['in']} "
        f"in {s['seconds']:.1f} s"
    )
    print(f"manifest:   {s['outputs']['manifest']}")
    print(f"quarantine: {s['outputs']['quarantine']}")
    print(f"summary:    {s['outputs']['summary']}")
    return 0
