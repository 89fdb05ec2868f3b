"""check_translations: planted faults of every kind are quarantined with the right reason, clean rows
pass, counts reconcile, the Data Docs report names the failing expectations, the gate stops a run
over the threshold, the synthetic dataset gives zero flags. Budget: under 60 s for the file (three
Great Expectations runs; the rest calls the per-row checks directly)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components import check_translations as ct
from components.checks.compute import CHECK_DESCRIPTIONS, CHECKS, CheckConfig, compute_checks
from components.checks.lexicon import DEFAULT_LEXICON, LexiconError, load_lexicon
from components.checks.masks import rle_validate
from components.data import manifest as mf
from components.text import zh


def write_raw_manifest(df: pd.DataFrame, path: str) -> str:
    """Write a manifest WITHOUT validation (write_manifest refuses duplicate ids), as a broken
    upstream tool would."""
    arrays = [pa.array(df[name].tolist(), type=typ) for name, typ in mf.COLUMNS.items()]
    schema = pa.schema([pa.field(n, t) for n, t in mf.COLUMNS.items()],
                       metadata={mf.SCHEMA_VERSION_KEY: mf.SCHEMA_VERSION.encode()})
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path)
    return path


def _tokens(text: str) -> set[str]:
    return set(zh.english_tokens(text))


def plant_faults(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Plant one fault of every kind; returns the frame and
    {fault: (row indices, expected check, words expected in the reason)}."""
    df = df.copy()
    used: set[int] = set()

    def pick(cond) -> int:
        for i, row in df.iterrows():
            if i not in used and cond(row):
                used.add(i)
                return i
        raise AssertionError("no row fits the fault")

    planted: dict[str, tuple[list[int], str, str]] = {}
    i = pick(lambda r: "left" in _tokens(r.text_en) and "左" in r.text_zh and "右" not in r.text_zh
             and "right" not in _tokens(r.text_en))
    df.at[i, "text_zh"] = df.at[i, "text_zh"].replace("左", "右")
    planted["swapped left/right"] = ([i], "meaning", "contradiction")
    i = pick(lambda r: "red" in _tokens(r.text_en) and "红" in r.text_zh
             and "blue" not in _tokens(r.text_en))
    df.at[i, "text_zh"] = df.at[i, "text_zh"].replace("红", "蓝")
    planted["colour changed"] = ([i], "meaning", "contradiction")
    i = pick(lambda r: True)
    df.at[i, "text_zh"] = df.at[i, "text_zh"].encode("utf-8").decode("latin-1")
    planted["mojibake latin-1"] = ([i], "script", "mojibake")
    i = pick(lambda r: len(r.text_zh) >= 4)
    df.at[i, "text_zh"] = df.at[i, "text_zh"].encode("utf-8").decode("gbk", errors="replace")
    planted["mojibake gbk"] = ([i], "script", "mojibake")
    i = pick(lambda r: True)
    df.at[i, "text_zh"] = df.at[i, "text_en"]
    planted["untranslated sentence"] = ([i], "script", "untranslated English")
    i = pick(lambda r: True)
    df.at[i, "text_zh"] = "   "
    planted["empty translation"] = ([i], "completeness", "empty")
    i = pick(lambda r: len(zh.english_tokens(r.text_en)) >= 7)
    df.at[i, "text_zh"] = "圆形"
    planted["truncated translation"] = ([i], "length", "ratio out of band")
    # collapsed duplicate: object B of an image gets object A's Chinese text
    a = b = None
    for _, grp in df[~df.index.isin(used)].groupby("image_id"):
        anns = grp.drop_duplicates("ann_id")
        if len(anns) >= 2:
            a, b = anns.index[:2]
            break
    assert a is not None
    used.update((a, b))
    df.at[b, "text_zh"] = df.at[a, "text_zh"]
    planted["collapsed duplicate"] = ([a, b], "duplicates", "same zh text")
    # schema faults
    i, j = pick(lambda r: True), pick(lambda r: True)
    df.at[j, "sample_id"] = df.at[i, "sample_id"]
    planted["duplicate id"] = ([i, j], "schema", "duplicate id")
    i = pick(lambda r: True)
    w = df.at[i, "mask"]["size"][1]
    df.at[i, "bbox"] = [float(w - 5), 2.0, 20.0, 10.0]
    planted["bbox outside"] = ([i], "schema", "bbox")
    i = pick(lambda r: True)
    m = dict(df.at[i, "mask"])
    df.at[i, "mask"] = {"size": m["size"], "counts": m["counts"][: len(m["counts"]) // 2] + "!!"}
    planted["undecodable mask"] = ([i], "schema", "mask not decodable")
    i = pick(lambda r: True)
    df.at[i, "split"] = "dev"
    planted["unknown split"] = ([i], "schema", "unknown split")
    # hostile paths: an S3 key that climbs out of the image cache, a split that climbs out of
    # the shard folder
    i = pick(lambda r: True)
    df.at[i, "image_uri"] = "s3://bucket/imgs/../../../../tmp/escaped/x.png"
    planted["image_uri leaving the cache"] = ([i], "schema", "unsafe image_uri")
    i = pick(lambda r: True)
    df.at[i, "split"] = "../../etc"
    planted["split leaving the shard folder"] = ([i], "schema", "unknown split")
    # invisible characters, an over-long pair whose length ratio is that of a normal pair, and an
    # image that is not there (every row of the image)
    i = pick(lambda r: True)
    df.at[i, "text_zh"] = "\u202e" + df.at[i, "text_zh"]
    planted["bidi override"] = ([i], "script", "control character: U+202E")
    i = pick(lambda r: True)
    df.at[i, "text_en"] = df.at[i, "text_en"].replace(" ", "\x00", 1)
    planted["NUL byte"] = ([i], "script", "control character: U+0000 (NULL) in text_en")
    i = pick(lambda r: True)
    k = 10_000 // len(df.at[i, "text_en"])
    df.at[i, "text_en"] = " ".join([df.at[i, "text_en"]] * k)
    df.at[i, "text_zh"] = df.at[i, "text_zh"] * k
    planted["10,000-character pair"] = ([i], "length", "too long: text_en has")
    i = pick(lambda r: True)
    rows = [i] + [j for j in df.index[df["image_uri"] == df.at[i, "image_uri"]] if j not in used]
    used.update(rows)
    df.loc[rows, "image_uri"] = os.path.join(os.path.dirname(df.at[i, "image_uri"]), "gone.png")
    planted["missing image"] = (rows, "image", "missing image")
    return df, planted


@pytest.fixture(scope="module")
def planted_run(synth_dataset, tmp_path_factory):
    """One Great Expectations run on the synthetic manifest with every fault planted."""
    base = mf.read_manifest(str(Path(synth_dataset) / "manifest.parquet"))
    df, planted = plant_faults(base)
    root = tmp_path_factory.mktemp("check")
    path = write_raw_manifest(df, str(root / "faulty.parquet"))
    out = root / "out"
    result = ct.check_translations(path, str(out), max_fail_rate=0.10,
                                   image_roots=[str(synth_dataset)])
    return {"df": df, "planted": planted, "out": out, "result": result, "path": path,
            "images": str(synth_dataset)}


def test_every_planted_fault_is_quarantined_with_its_reason(planted_run):
    q = pq.read_table(planted_run["out"] / "quarantine.parquet").to_pandas()
    df = planted_run["df"]
    assert {"row", "checks", "reasons"} <= set(q.columns) and set(mf.COLUMNS) <= set(q.columns)
    by_row = {r.row: r for r in q.itertuples()}
    for fault, (rows, check, words) in planted_run["planted"].items():
        for i in rows:
            assert i in by_row, f"{fault}: row {i} ({df.at[i, 'sample_id']}) not quarantined"
            got = by_row[i]
            assert got.sample_id == df.at[i, "sample_id"] and got.text_zh == df.at[i, "text_zh"]
            assert check in list(got.checks), f"{fault}: checks {list(got.checks)}"
            mine = [x for x in got.reasons if x.startswith(check + ": ")]
            assert any(words in x for x in mine), f"{fault}: reasons {list(got.reasons)}"


def test_specific_reasons_name_the_terms(planted_run):
    q = pq.read_table(planted_run["out"] / "quarantine.parquet").to_pandas()
    reasons = [x for rs in q["reasons"] for x in rs]
    assert any(re.search(r"contradiction: en says left but zh says right\(右\)", x) for x in reasons)
    assert any(re.search(r"contradiction: en says red but zh says blue\(蓝\)", x) for x in reasons)
    assert any("UTF-8 read as Latin-1" in x for x in reasons)
    assert any("UTF-8 read as GBK" in x or "U+FFFD" in x for x in reasons)
    assert any("unknown split: 'dev'" in x for x in reasons)
    assert any("unknown split: '../../etc'" in x for x in reasons)
    assert any(x.startswith("schema: unsafe image_uri: ") and "'..' (path traversal)" in x
               for x in reasons)


def test_unsafe_image_uri_is_named_by_its_sample_id(planted_run):
    """The report's and the summary's message of the row names its sample_id."""
    df = planted_run["df"]
    row = df.index[df["image_uri"].str.contains("/../", regex=False)][0]
    sid = df.at[row, "sample_id"]
    summary = json.loads((planted_run["out"] / "summary.json").read_text())
    assert summary["per_reason"]["schema/unsafe image_uri"] == 1
    checks = CheckConfig()
    reasons, _ = compute_checks(df.loc[[row]].reset_index(drop=True), checks)
    assert [r for r in reasons["schema"][0] if r.startswith("unsafe image_uri")]
    from components.checks.results import Outcome

    messages = Outcome.of(reasons).messages(df.loc[[row], "sample_id"].reset_index(drop=True))
    assert messages["schema"][0].startswith(f"{sid}: unsafe image_uri: ")


def test_clean_rows_pass_and_counts_reconcile(planted_run):
    df, res, out = planted_run["df"], planted_run["result"], planted_run["out"]
    planted_rows = {i for rows, _, _ in planted_run["planted"].values() for i in rows}
    clean = mf.read_manifest(str(out / "clean.parquet"))
    q = pq.read_table(out / "quarantine.parquet")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_in"] == len(df) == summary["rows_clean"] + summary["rows_quarantined"]
    assert summary["rows_clean"] == len(clean) == len(df) - len(planted_rows)
    assert summary["rows_quarantined"] == q.num_rows == len(planted_rows)
    assert set(clean["sample_id"]) == set(df.drop(index=list(planted_rows))["sample_id"])
    assert list(clean.columns[: len(mf.COLUMNS)]) == list(mf.COLUMNS)
    for key in ("rows_in", "rows_clean", "rows_quarantined", "report"):
        assert res[key] == summary[key]
    assert summary["per_check"]["meaning"] >= 2 and summary["per_check"]["schema"] == 7
    assert summary["per_check"]["duplicates"] == 2 and summary["per_check"]["completeness"] == 1
    assert summary["gate"] == "pass" and summary["fail_rate"] == pytest.approx(
        len(planted_rows) / len(df), abs=1e-6)


def test_report_names_failing_expectations_and_rows(planted_run):
    res = planted_run["result"]
    assert res["report"].endswith("index.html") and os.path.isfile(res["report"])
    assert Path(res["report"]).is_relative_to(planted_run["out"] / "gx")
    page = Path(res["validation_page"]).read_text(encoding="utf-8")
    for check in CHECKS:
        assert CHECK_DESCRIPTIONS[check].split(":")[0] in page
    assert "translation_checks" in page
    df = planted_run["df"]
    i = planted_run["planted"]["swapped left/right"][0][0]
    assert df.at[i, "sample_id"] in page  # failing rows are listed by id
    exp = res["great_expectations"]["expectations"]
    assert not res["great_expectations"]["success"]
    for check in CHECKS:
        assert exp[check]["expectation"] == "expect_column_values_to_be_null"
        assert exp[check]["success"] is False and exp[check]["unexpected_count"] >= 1
    assert exp["sample_id_unique"]["unexpected_count"] == 2


def test_gate_stops_over_threshold_from_the_cli(planted_run, tmp_path, capsys):
    from pipelines.cli import main

    out = tmp_path / "gate"
    rc = main(["check-translations", "--manifest", planted_run["path"], "--out", str(out),
               "--max-fail-rate", "0.01", "--image-root", planted_run["images"], "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    n_bad = planted_run["result"]["rows_quarantined"]
    n = planted_run["result"]["rows_in"]
    assert re.search(rf"refseg: error: check-translations gate: {n_bad} of {n} rows fail "
                     rf"\({n_bad / n:.2%}\), over the threshold max_fail_rate=1\.00%; top reasons: "
                     r"\w+/", err), err
    assert err.count("\n") == 1
    # the outputs are written before the gate fails
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gate"] == "fail" and summary["rows_quarantined"] == n_bad
    assert (out / "clean.parquet").is_file() and (out / "quarantine.parquet").is_file()
    assert Path(summary["report"]).is_file()


def test_synthetic_dataset_gives_no_flag_through_the_cli(synth_dataset, tmp_path, capsys):
    from pipelines.cli import main

    out = tmp_path / "synth"
    rc = main(["check-translations", "--manifest", str(Path(synth_dataset) / "manifest.parquet"),
               "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_quarantined"] == 0, summary["examples"]
    assert summary["per_check"] == {c: 0 for c in CHECKS}
    assert summary["great_expectations"]["success"] is True
    assert summary["rows_clean"] == summary["rows_in"] == len(
        mf.read_manifest(str(out / "clean.parquet")))
    assert "0 quarantined" in text and "report" in text


# ------------------------------------------------------------------------------------------------
# The per-row checks without Great Expectations (fast)
def _pairs_frame(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    rle = mf.encode_mask(np.pad(np.ones((4, 4), np.uint8), 2))
    return pd.DataFrame([{
        "sample_id": f"t/{k}", "dataset": "t", "split": "train", "image_id": k, "image_uri": "x.png",
        "ref_id": k, "ann_id": k, "category": "thing", "bbox": [2.0, 2.0, 4.0, 4.0], "mask": rle,
        "text_en": en, "text_zh": zh_} for k, (en, zh_) in enumerate(pairs)])


def test_meaning_and_script_on_hand_made_pairs():
    pairs = [
        ("the man on the left in a red shirt", "左边穿红色衬衫的男人"),    # ok
        ("woman in a white T shirt", "穿白色T恤的女人"),                 # ok: T allowed
        ("the man on the left", "右边的男人"),                          # contradiction
        ("the two dogs", "三只狗"),                                     # number contradiction
        ("the woman at the top", "上面的男人"),                         # gender contradiction
        ("pink umbrella", "粉红色的伞"),                                # ok: 粉红 is not red
        ("the zebra", "斑马"),                                          # ok: 斑马 is no horse
        ("the triangle", "三角形"),                                     # ok: 三角 is no three
        ("the dog", "狗 jacket 的"),                                     # untranslated
        ("the dog", "那只狗\ufffd"),                                     # replacement character
        ("the elephant", "锟斤拷大象"),                                   # GBK mojibake
    ]
    reasons, _ = compute_checks(_pairs_frame(pairs))
    flat = [[f"{c}: {r}" for c in CHECKS for r in reasons[c].iat[i]] for i in range(len(pairs))]
    assert flat[0] == [] and flat[1] == [] and flat[5] == [] and flat[6] == [] and flat[7] == []
    assert any("contradiction: en says left" in x for x in flat[2])
    assert any("contradiction: en says two but zh says three" in x for x in flat[3])
    assert any("contradiction: en says female but zh says male" in x for x in flat[4])
    assert any("untranslated English: 'jacket'" in x for x in flat[8])
    assert any("U+FFFD" in x for x in flat[9])
    assert any("UTF-8 read as GBK" in x for x in flat[10])


def test_lexicon_is_extendable_and_errors_name_the_line(tmp_path):
    extra = tmp_path / "mine.tsv"
    extra.write_text("# mine\nstar\tstar\tboth\tstar|stars\t五角星|星形\n", encoding="utf-8")
    lex = load_lexicon([DEFAULT_LEXICON, str(extra)])
    assert "star" in lex.concepts and "left" in lex.concepts
    df = _pairs_frame([("the red star", "红色的圆形"), ("the stars", "五角星")])
    reasons, _ = compute_checks(df, lexicon=lex)
    assert any("en 'star' has no 五角星" in x for x in reasons["meaning"].iat[0])
    assert reasons["meaning"].iat[1] == []
    bad = tmp_path / "bad.tsv"
    bad.write_text("# c\ncolour\tteal\tsometimes\tteal\t青色\n", encoding="utf-8")
    with pytest.raises(LexiconError, match=r"bad\.tsv, line 2: check must be one of"):
        load_lexicon(str(bad))
    dup = tmp_path / "dup.tsv"
    dup.write_text("colour\tred\tboth\tred\t红\n", encoding="utf-8")
    with pytest.raises(LexiconError, match="concept 'red' already defined"):
        load_lexicon([DEFAULT_LEXICON, str(dup)])


def test_rle_validation_matches_pycocotools_and_rejects_garbage():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    counts, sizes, areas = [], [], []
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        rle = mf.encode_mask(m)
        counts.append(rle["counts"])
        sizes.append(rle["size"])
        areas.append(int(mask_utils.area({"size": rle["size"],
                                          "counts": rle["counts"].encode()})))
    ok, area, problem = rle_validate(counts, sizes)
    assert ok.all() and area.tolist() == areas and set(problem) == {""}
    bad_counts = [counts[0] + "1", "", "ab!", counts[1][:-1] + "o", counts[2]]
    bad_sizes = [sizes[0], sizes[1], [4, 4], sizes[1], [0, 5]]
    ok, _, problem = rle_validate(bad_counts, bad_sizes)
    assert not ok.any()
    assert "size says" in problem[0] and "non-empty" in problem[1] and "alphabet" in problem[2]
    assert "ends inside a number" in problem[3] and "size must be" in problem[4]


def test_length_band_configured_and_bad_arguments(tmp_path):
    df = _pairs_frame([("the dog", "狗"), ("the big brown dog on the left", "狗")])
    cfg = CheckConfig(length_band=(0.5, 2.0))
    reasons, stats = compute_checks(df, cfg)
    assert stats["length_band"]["source"] == "configured"
    assert reasons["length"].iat[0] == []
    assert reasons["length"].iat[1] == ["ratio out of band: (1+1)/(7+1) = 0.25 not in [0.50, 2.00]"]
    with pytest.raises(ValueError, match="max_fail_rate must be in"):
        ct.check_translations("x.parquet", str(tmp_path), max_fail_rate=2.0)


def test_s3_manifest_and_output(synth_dataset, s3_bucket):
    from components.data import storage

    df = mf.read_manifest(str(Path(synth_dataset) / "manifest.parquet")).iloc[:40]
    src = mf.write_manifest(df, f"{s3_bucket}/in/manifest.parquet")
    res = ct.check_translations(src, f"{s3_bucket}/out", image_roots=[str(synth_dataset)])
    assert res["rows_in"] == res["rows_clean"] == 40 and res["rows_quarantined"] == 0
    assert res["report"] == f"{s3_bucket}/out/gx/uncommitted/data_docs/local_site/index.html"
    assert storage.exists(res["report"]) and storage.exists(res["validation_page"])
    assert len(mf.read_manifest(f"{s3_bucket}/out/clean.parquet")) == 40
    summary = json.loads(storage.read_bytes(f"{s3_bucket}/out/summary.json"))
    assert summary["rows_clean"] == 40


def test_control_characters_are_named_and_whitespace_is_allowed():
    pairs = [
        ("the red circle", "红色的\u202e圆形"),            # bidi override
        ("the red\x00circle", "红色的圆形"),               # NUL
        ("the red circle", "红色的\u2066圆形\u2069"),      # isolates
        ("the red\u200bcircle", "红色的圆形\ufeff"),       # zero-width space, BOM
        ("the red circle\u2028", "红色的\u00ad圆形"),      # line separator, soft hyphen
        ("the\tred circle\n", "红色的\u3000圆形\r\n"),     # tab, newline, ideographic space: ok
        ("the red\u00a0circle", "红色的 圆形"),            # no-break space: ok
    ]
    reasons, _ = compute_checks(_pairs_frame(pairs))
    script = [list(reasons["script"].iat[i]) for i in range(len(pairs))]
    assert script[0] == ["control character: U+202E (RIGHT-TO-LEFT OVERRIDE) in text_zh"]
    assert script[1] == ["control character: U+0000 (NULL) in text_en"]
    assert script[2] == ["control character: U+2066 (LEFT-TO-RIGHT ISOLATE), U+2069 (POP "
                         "DIRECTIONAL ISOLATE) in text_zh"]
    assert script[3] == ["control character: U+200B (ZERO WIDTH SPACE) in text_en",
                         "control character: U+FEFF (ZERO WIDTH NO-BREAK SPACE) in text_zh"]
    assert script[4] == ["control character: U+2028 (LINE SEPARATOR) in text_en",
                         "control character: U+00AD (SOFT HYPHEN) in text_zh"]
    assert script[5] == [] and script[6] == []


def test_expressions_over_the_maximum_length_are_quarantined():
    long_en, long_zh = " ".join(["the red circle"] * 25), "红色的圆形" * 40   # 374 and 200 chars
    df = _pairs_frame([(long_en, long_zh), ("the red circle", "红色的圆形"),
                       ("the red circle on the left", "左边的红色圆形")])
    reasons, _ = compute_checks(df)
    assert reasons["length"].iat[0] == [
        "too long: text_en has 374 characters, over the limit of 300 (--max-chars-en)",
        "too long: text_zh has 200 characters, over the limit of 150 (--max-chars-zh)"]
    assert reasons["length"].iat[1] == [] and reasons["length"].iat[2] == []
    reasons, _ = compute_checks(df, CheckConfig(max_chars_en=20, max_chars_zh=6))
    assert reasons["length"].iat[1] == []
    assert reasons["length"].iat[2] == [
        "too long: text_en has 26 characters, over the limit of 20 (--max-chars-en)",
        "too long: text_zh has 7 characters, over the limit of 6 (--max-chars-zh)"]


@pytest.mark.parametrize("kwargs,words", [
    ({"max_chars_en": 0}, "max_chars_en must be at least 1"),
    ({"max_chars_zh": -5}, "max_chars_zh must be at least 1"),
    ({"max_image_pixels": 0}, "max_image_pixels must be in [1, "),
    ({"max_image_pixels": 10**9}, "(the training loader refuses bigger images)"),
    ({"image_roots": ["http://example.com/imgs"]}, "give a local folder or an s3:// prefix"),
])
def test_bad_limits_are_refused_before_reading(tmp_path, kwargs, words):
    from components.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(words)):
        ct.check_translations(str(tmp_path / "none.parquet"), str(tmp_path / "out"), **kwargs)
    assert not (tmp_path / "out").exists()


def test_images_on_s3_are_checked_under_their_prefixes(synth_dataset, s3_bucket):
    """s3:// images: read once through storage; a missing object, a truncated one and one outside
    the given prefix are named; the default allows every bucket."""
    from components.checks.images import ImagePolicy
    from components.data import storage

    df = mf.read_manifest(str(Path(synth_dataset) / "manifest.parquet"))
    df = df[df["image_id"] < 4].reset_index(drop=True)
    good = Path(df.at[0, "image_uri"]).read_bytes()
    storage.write_bytes(f"{s3_bucket}/imgs/good.png", good)
    storage.write_bytes(f"{s3_bucket}/imgs/cut.png", good[:100])
    storage.write_bytes(f"{s3_bucket}/other/good.png", good)
    uris = [f"{s3_bucket}/imgs/good.png", f"{s3_bucket}/imgs/gone.png", f"{s3_bucket}/imgs/cut.png",
            f"{s3_bucket}/other/good.png"]
    df["image_uri"] = [uris[int(i)] for i in df["image_id"]]
    policy = ImagePolicy.of("s3://x/m.parquet", [f"{s3_bucket}/imgs"], workers=2)
    reasons, stats = compute_checks(df, images=policy)
    got = {uris[int(df.at[i, "image_id"])]: list(reasons["image"].iat[i]) for i in range(len(df))}
    assert got[uris[0]] == [] and stats["images"]["checked"] == 4
    assert got[uris[1]] == [f"missing image: {uris[1]}: no such file"]
    assert got[uris[2]] == [f"truncated image: {uris[2]}: cannot decode (Truncated File Read)"]
    assert got[uris[3]] == [f"refused image_uri: {uris[3]} outside the allowed roots "
                            f"({s3_bucket}/imgs)"]
    everywhere = ImagePolicy.of(f"{s3_bucket}/m.parquet", None)
    assert everywhere.roots == ("s3://",) and everywhere.outside(uris[3]) is None
    assert "outside the allowed roots" in everywhere.outside(str(Path(synth_dataset) / "x.png"))
