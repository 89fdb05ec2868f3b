"""The check-translations step: Great Expectations checks of every English/Chinese pair.

Every row of the manifest is checked (completeness, script, length, meaning, duplicates, schema,
image: see :mod:`components.checks.compute`; every distinct image is opened and decoded once), the
results are validated as one Great Expectations suite
with one expectation per check, and a checkpoint's ``UpdateDataDocsAction`` publishes the data
validation report (Data Docs HTML). The bilingual lexicon of the meaning check is
``components/data/lexicon.tsv`` and the English words allowed in Chinese text are in
``components/data/allowlist_en.txt``; both can be extended (``--lexicon``, ``--allowlist``).

Output folder (local or s3://)::

    clean.parquet       rows that pass every check (components.data.manifest.write_manifest)
    quarantine.parquet  rows that fail: all input columns + ``row`` (position in the input) and
                        ``checks`` and ``reasons`` (lists of strings)
    summary.json        counts (rows_in = rows_clean + rows_quarantined), counts per check and
                        reason, length band, gate, timings, report path
    gx/                 the Great Expectations project; Data Docs under gx/uncommitted/data_docs/

The gate: when the share of failing rows exceeds ``max_fail_rate`` the step raises
:class:`TranslationGateError` (an ``InputError``) after writing every output.

The library code lives in :mod:`components.checks`; this module is the step's story
(:func:`check_manifest` over :class:`CheckOptions`), its keyword form :func:`check_translations`
and the CLI (``refseg check-translations``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field

from components.checks.characters import DEFAULT_MAX_CHARS
from components.checks.compute import CHECK_DESCRIPTIONS, CHECKS, CheckConfig, compute_checks
from components.checks.expectations import SUITE, run_great_expectations
from components.checks.gate import DEFAULT_MAX_FAIL_RATE, Gate, TranslationGateError
from components.checks.lexicon import (
    DEFAULT_ALLOWLIST,
    DEFAULT_LEXICON,
    load_allowlist,
    load_lexicon,
)
from components.checks.results import SUMMARY, Outcome, summary, write_tables
from components.checks.schema import read_raw
from components.data import manifest as mf
from components.data.image_check import DEFAULT_MAX_PIXELS
from components.data.names import check_split_name
from components.data.storage import staged_output
from components.errors import ConfigError
from components.logs import get_logger

__all__ = ["CheckOptions", "TranslationGateError", "check_manifest", "check_translations",
           "configure_parser", "run"]


@dataclass
class CheckOptions:
    """One run of the step: the manifest to read, the folder to write, the gate and the checks'
    thresholds (:class:`components.checks.compute.CheckConfig`)."""

    manifest_uri: str
    out_dir: str
    max_fail_rate: float = DEFAULT_MAX_FAIL_RATE
    checks: CheckConfig = field(default_factory=CheckConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_fail_rate <= 1.0:
            raise ConfigError(f"max_fail_rate must be in [0, 1], got {self.max_fail_rate}")
        if not 0.0 <= self.checks.min_cjk_ratio <= 1.0:
            raise ConfigError(f"min_cjk_ratio must be in [0, 1], got {self.checks.min_cjk_ratio}")
        band = self.checks.length_band
        if band is not None and not 0 < band[0] < band[1]:
            raise ConfigError(f"length band must be 0 < low < high, got {band}")
        for split in self.checks.known_splits:
            check_split_name(split, "known split")
        for lang in ("en", "zh"):
            limit = getattr(self.checks, f"max_chars_{lang}")
            if limit < 1:
                raise ConfigError(f"max_chars_{lang} must be at least 1, got {limit}")
        self.checks.image_policy(self.manifest_uri)  # refuses a bad root or pixel limit


def check_manifest(opts: CheckOptions) -> dict:
    """Run every check on the manifest, write the outputs and return the summary (``report``,
    ``rows_in``, ``rows_clean``, ``rows_quarantined``, ...). Raises :class:`TranslationGateError`
    after writing everything when the failing share exceeds ``opts.max_fail_rate``."""
    log = get_logger("check-translations")
    t_start = time.perf_counter()
    cfg = opts.checks
    lexicon, allow = load_lexicon(cfg.lexicons), load_allowlist(cfg.allowlists)

    log.info("reading %s", opts.manifest_uri)
    t0 = time.perf_counter()
    table, df = read_raw(opts.manifest_uri)
    timings = {"read": _since(t0)}
    log.info("%d rows; running %d checks (%d lexicon concepts)", len(df), len(CHECKS),
             len(lexicon.concepts))
    reasons, stats = compute_checks(df, cfg, lexicon, allow, cfg.image_policy(opts.manifest_uri))
    timings.update(stats["timings_s"])
    outcome = Outcome.of(reasons)
    gate = Gate(len(outcome.bad_idx), len(df), opts.max_fail_rate)
    messages = outcome.messages(df["sample_id"])

    with staged_output(opts.out_dir, prefix="check-", step="check-translations") as local_out:
        log.info("validating with Great Expectations (suite %r, Data Docs)", SUITE)
        t0 = time.perf_counter()
        gx_result = run_great_expectations(messages, local_out, CHECK_DESCRIPTIONS)
        timings["great_expectations"] = _since(t0)
        t0 = time.perf_counter()
        write_tables(table, df, outcome, local_out)
        timings["write"] = _since(t0)
        timings["total"] = _since(t_start)
        config = {"min_cjk_ratio": cfg.min_cjk_ratio, "known_splits": list(cfg.known_splits),
                  "bbox_tolerance": cfg.bbox_tolerance, "lexicon": lexicon.sources,
                  "lexicon_concepts": len(lexicon.concepts), "allowlist": cfg.allowlists,
                  "max_chars": {"en": cfg.max_chars_en, "zh": cfg.max_chars_zh},
                  "image_roots": stats.get("images", {}).get("roots"),
                  "max_image_pixels": cfg.max_image_pixels}
        result = summary(opts.manifest_uri, outcome, messages, gate, stats, config, gx_result,
                         local_out, str(opts.out_dir), timings)
        with open(os.path.join(local_out, SUMMARY), "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2, ensure_ascii=False)

    log.info("%d clean, %d quarantined (%s); per check: %s", result["rows_clean"],
             result["rows_quarantined"], format(gate.fail_rate, ".2%"), result["per_check"])
    log.info("report: %s", result["report"])
    gate.enforce(outcome.kinds(), str(opts.out_dir))
    return result


def _since(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)


def check_translations(manifest_uri: str, out_dir: str, max_fail_rate: float = DEFAULT_MAX_FAIL_RATE,
                       lexicon: list[str] | str | None = None, allowlist: list[str] | str | None = None,
                       min_cjk_ratio: float = 0.6, length_band: tuple[float, float] | None = None,
                       known_splits: tuple[str, ...] | None = None, bbox_tolerance: float = 1.0,
                       workers: int | None = None, max_chars_en: int = DEFAULT_MAX_CHARS["en"],
                       max_chars_zh: int = DEFAULT_MAX_CHARS["zh"],
                       image_roots: list[str] | str | None = None,
                       max_image_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """The step in keyword form (as the pipeline calls it): builds :class:`CheckOptions` and runs
    :func:`check_manifest`. ``lexicon`` / ``allowlist``: one file or several (default
    ``components/data/lexicon.tsv`` / ``components/data/allowlist_en.txt``). ``image_roots``:
    local folders and s3:// prefixes the images must lie in (default: the manifest's folder and
    any s3:// object)."""
    checks = CheckConfig(
        min_cjk_ratio=min_cjk_ratio, length_band=length_band,
        known_splits=tuple(known_splits or mf.KNOWN_SPLITS), bbox_tolerance=bbox_tolerance,
        lexicons=_listed(lexicon, DEFAULT_LEXICON), allowlists=_listed(allowlist, DEFAULT_ALLOWLIST),
        workers=workers, max_chars_en=int(max_chars_en), max_chars_zh=int(max_chars_zh),
        image_roots=tuple(_listed(image_roots, None)) if image_roots else None,
        max_image_pixels=int(max_image_pixels))
    return check_manifest(CheckOptions(manifest_uri, out_dir, max_fail_rate, checks))


def _listed(paths: list[str] | str | None, default: str | None) -> list[str]:
    return [paths] if isinstance(paths, str) else list(paths or [default])


# ------------------------------------------------------------------------------------------------
# CLI
def _band(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (e.g. 0.5,4), got {text!r}") from None
    return lo, hi


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="bilingual manifest (Parquet, local or s3://)")
    p.add_argument("--out", required=True, help="output folder (local or s3://)")
    p.add_argument("--lexicon", action="append", default=None, metavar="FILE",
                   help="lexicon TSV (repeatable; default components/data/lexicon.tsv; give it "
                        "too to extend rather than replace it)")
    p.add_argument("--allowlist", action="append", default=None, metavar="FILE",
                   help="English words allowed in Chinese text (repeatable; default "
                        "components/data/allowlist_en.txt)")
    p.add_argument("--max-fail-rate", type=float, default=DEFAULT_MAX_FAIL_RATE,
                   help="gate: fail when the share of failing rows is above this (default 0.05)")
    p.add_argument("--min-cjk-ratio", type=float, default=0.6,
                   help="least share of Chinese characters in text_zh (default 0.6)")
    p.add_argument("--length-band", type=_band, default=None, metavar="LOW,HIGH",
                   help="band of (zh words + 1) / (en words + 1); default: learned from the data")
    p.add_argument("--max-chars-en", type=int, default=DEFAULT_MAX_CHARS["en"], metavar="N",
                   help=f"longest English expression in characters (default {DEFAULT_MAX_CHARS['en']})")
    p.add_argument("--max-chars-zh", type=int, default=DEFAULT_MAX_CHARS["zh"], metavar="N",
                   help=f"longest Chinese expression in characters (default {DEFAULT_MAX_CHARS['zh']})")
    p.add_argument("--image-root", action="append", default=None, metavar="ROOT",
                   help="local folder or s3:// prefix the images must lie in (repeatable; default: "
                        "the manifest's folder and any s3:// object; given roots replace it)")
    p.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse images with more pixels (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--workers", type=int, default=None, help="jieba processes (default: all cores)")


def run(args) -> int:
    s = check_translations(args.manifest, args.out, max_fail_rate=args.max_fail_rate,
                           lexicon=args.lexicon, allowlist=args.allowlist,
                           min_cjk_ratio=args.min_cjk_ratio, length_band=args.length_band,
                           workers=args.workers, max_chars_en=args.max_chars_en,
                           max_chars_zh=args.max_chars_zh, image_roots=args.image_root,
                           max_image_pixels=args.max_image_pixels)
    print(f"check-translations: {s['rows_in']} rows -> {s['rows_clean']} clean, "
          f"{s['rows_quarantined']} quarantined ({s['fail_rate']:.2%}, gate "
          f"{s['max_fail_rate']:.2%}) in {s['timings_s']['total']} s; report {s['report']}")
    return 0
