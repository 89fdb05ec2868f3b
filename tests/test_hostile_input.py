"""Hostile and broken input end to end (docs/reliability.md): paths built from data never leave
their root, split names follow one rule, a checkpoint meets only the vocabulary it was trained on
(by content), a user's mistake with a model URI, a run id or a config file is one line and
exit 1, and check-translations quarantines every image defect and invisible or over-long text
before training. Budget: about a minute (a tiny untrained network, SQLite MLflow stores)."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from components.data import manifest as mf
from components.errors import ConfigError, InputError
from pipelines.cli import main

ZH = "左边的红色方块"


def _one_error_line(err: str) -> str:
    """The single ``refseg: error:`` line of a command's stderr: no traceback, and the message
    ends on that line (it is the last thing the command prints)."""
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.startswith("refseg: error:")]
    assert len(lines) == 1 and err.rstrip().splitlines()[-1] == lines[0], err
    return lines[0]


def _png(path: Path) -> str:
    from PIL import Image

    img = np.full((40, 56, 3), 30, dtype=np.uint8)
    img[5:20, 5:25] = (220, 30, 30)
    Image.fromarray(img).save(path)
    return str(path)


def _copy_with_manifest(data_dir: Path, dst: Path, change) -> Path:
    """A copy of a tokenize folder whose manifest went through ``change(df) -> df``."""
    shutil.copytree(data_dir, dst)
    df = change(mf.read_manifest(str(dst / "manifest.parquet")))
    mf.write_manifest(df, str(dst / "manifest.parquet"))
    return dst


# ------------------------------------------------------------------------------------------------
# 1. paths built from data stay inside their root; split names follow one rule
def test_split_name_rule():
    from components.data.names import check_split_name, is_split_name

    for good in ("train", "val", "testA", "umd-test", "val_2", "v1.0", "9"):
        assert is_split_name(good), good
    for bad in ("../../etc", "..", ".", "a/b", "a\\b", "", "-x", ".hidden", "a b", "testA+testB",
                "x\x00", "a" * 65, None, 3):
        assert not is_split_name(bad), bad
    with pytest.raises(ConfigError, match=r"--split '\.\./x' is not a valid split name: use "):
        check_split_name("../x", "--split")


@pytest.mark.parametrize("flags,named", [
    (["--split", "../../etc"], "'../../etc'"),
    (["--split", "val,sub/x"], "'sub/x'"),
    (["--gate-split", "testA+../../etc"], "'../../etc'"),
], ids=["split", "one-of-splits", "gate-split"])
def test_evaluate_refuses_split_names_before_reading_anything(tmp_path, capsys, flags, named):
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path),
               "--out", str(tmp_path / "out"), *flags])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 1 and named in line and "not a valid split name" in line
    assert not (tmp_path / "out").exists()


def test_train_refuses_a_select_split_that_is_a_path(data_dir, tmp_path, capsys):
    rc = main(["train", "--data", str(data_dir), "--lang", "zh", "--config", "small",
               "--out", str(tmp_path / "run"), "--set", "select_split=../../etc"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 1 and "select_split '../../etc' is not a valid split name" in line
    assert not (tmp_path / "run").exists()


def test_pipeline_options_refuse_bad_splits_and_configs_before_any_task(tmp_path):
    from pipelines.local_run import PipelineOptions

    with pytest.raises(ConfigError, match="'../x' is not a valid split name"):
        PipelineOptions("m.parquet", splits="val,../x")
    with pytest.raises(ConfigError, match=r"gate_split 'testA\+/etc'"):
        PipelineOptions("m.parquet", gate_split="testA+/etc")
    bad = tmp_path / "bad.yaml"
    bad.write_text("input_size: abc\n")
    with pytest.raises(ConfigError, match="input_size must be int"):
        PipelineOptions("m.parquet", config=str(bad))


def test_tokenize_refuses_a_split_name_that_is_a_path(synth_dataset, tmp_path):
    """A manifest row with split '../../etc' would write shards/<lang>/../../etc.npz: refused,
    naming the row, before anything is written."""
    from components.tokenize import tokenize

    df = mf.read_manifest(str(Path(synth_dataset) / "manifest.parquet"))
    sid = df.at[5, "sample_id"]
    df.at[5, "split"] = "../../etc"
    path = mf.write_manifest(df, str(tmp_path / "hostile.parquet"))
    out = tmp_path / "deep" / "tok"
    with pytest.raises(InputError) as err:
        tokenize(path, str(out), zh_dim=8, en_dim=8, w2v_epochs=1)
    msg = str(err.value)
    assert f"sample_id {sid!r}" in msg and "'../../etc' is not a valid split name" in msg
    assert not out.exists() and not list(tmp_path.rglob("etc.npz"))


def test_dataset_refuses_an_image_uri_that_leaves_the_cache(data_dir, tmp_path):
    """image_uri s3://bucket/imgs/../../../../<folder>/x.png in the data folder's manifest: the
    dataset refuses it when built, naming a sample, before any image is fetched."""
    from components.data.refdata import RefDataError, RefDataset

    victim = {}

    def plant(df):
        row = df.index[df["split"] == "val"][0]
        victim["image_id"] = int(df.at[row, "image_id"])
        rows = df["image_id"] == victim["image_id"]
        victim["ids"] = set(df.loc[rows & (df["split"] == "val"), "sample_id"])
        df.loc[rows, "image_uri"] = "s3://bucket/imgs/../../../../escaped/x.png"
        return df

    data = _copy_with_manifest(Path(data_dir), tmp_path / "data", plant)
    cache = tmp_path / "a" / "b" / "cache"
    with pytest.raises(RefDataError) as err:
        RefDataset(str(data), "zh", "val", 64, cache_dir=str(cache))
    msg = str(err.value)
    assert "image_uri refused" in msg and "'..' (path traversal)" in msg
    assert any(repr(s) in msg for s in victim["ids"]), msg
    assert not (tmp_path / "escaped").exists() and not cache.exists()


# ------------------------------------------------------------------------------------------------
# 2. a checkpoint meets only the vocabulary it was trained on: compared by content
def _tiny_checkpoint(path: Path, vocab: list[str], extra: dict) -> str:
    from model import build_model, load_config, save_checkpoint

    cfg = load_config("small", dict(input_size=64, backbone_widths=[8, 8, 16, 16], c_v=16,
                                    c_l=16, c_m=16, embed_dim=16, convlstm_hidden=8,
                                    le_reduction=4, mutan_rank=2, seed=3))
    save_checkpoint(str(path), build_model(cfg, len(vocab)), cfg,
                    {"lang": "zh", "vocab": "vocab_zh.json", "step": 1, **extra})
    return str(path)


@pytest.fixture(scope="module")
def vocab_pair(data_dir, tmp_path_factory):
    """The tokenize folder, a copy whose zh vocabulary has the same size but two words swapped
    (another tokenize output of the same language), a checkpoint with the fingerprint of the
    first and one written before fingerprints were stored."""
    from components.text.tokenizer import FINGERPRINT_KEY, vocab_fingerprint

    root = tmp_path_factory.mktemp("vocab-pair")
    other = root / "other"
    shutil.copytree(data_dir, other)
    vocab = json.loads((Path(data_dir) / "vocab_zh.json").read_text(encoding="utf-8"))
    swapped = list(vocab)
    swapped[2], swapped[3] = swapped[3], swapped[2]
    (other / "vocab_zh.json").write_text(json.dumps(swapped, ensure_ascii=False),
                                         encoding="utf-8")
    from components.data.outputs import seal

    seal(str(other), "tokenize")  # a whole tokenize output, not a damaged one
    return {"data": str(data_dir), "other": str(other),
            "fp": vocab_fingerprint(vocab), "other_fp": vocab_fingerprint(swapped),
            "ckpt": _tiny_checkpoint(root / "best.pt", vocab,
                                     {FINGERPRINT_KEY: vocab_fingerprint(vocab)}),
            "old": _tiny_checkpoint(root / "old.pt", vocab, {})}


def test_fingerprint_is_of_the_ordered_content():
    from components.text.tokenizer import vocab_fingerprint

    a = vocab_fingerprint(["<pad>", "<unk>", "左", "右"])
    assert len(a) == 64 and a == vocab_fingerprint(("<pad>", "<unk>", "左", "右"))
    assert a != vocab_fingerprint(["<pad>", "<unk>", "右", "左"])
    assert a != vocab_fingerprint(["<pad>", "<unk>", "左右"])


def test_evaluate_refuses_a_vocabulary_of_the_same_size_with_other_words(vocab_pair, tmp_path,
                                                                         capsys):
    v = vocab_pair
    assert v["fp"] != v["other_fp"]
    common = ["--checkpoint", v["ckpt"], "--split", "val", "--no-crf", "--max-samples", "2",
              "--no-report", "--no-mlflow", "--quiet", "--workers", "1"]
    rc = main(["evaluate", "--data", v["other"], "--out", str(tmp_path / "bad"), *common])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 1 and v["fp"][:12] in line and v["other_fp"][:12] in line
    assert "vocab_zh.json" in line and not (tmp_path / "bad" / "metrics.json").exists()
    # the vocabulary it was trained on passes
    assert main(["evaluate", "--data", v["data"], "--out", str(tmp_path / "ok"), *common]) == 0
    assert (tmp_path / "ok" / "metrics.json").exists()


def test_predict_refuses_a_tokenizer_of_the_same_size_with_other_words(vocab_pair, tmp_path,
                                                                      capsys):
    v = vocab_pair
    image = _png(tmp_path / "scene.png")
    common = ["--model", v["ckpt"], "--image", image, "--text", ZH, "--lang", "zh"]
    rc = main(["predict", "--tokenizer", v["other"], "--out", str(tmp_path / "bad.png"), *common])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 1 and v["fp"][:12] in line and v["other_fp"][:12] in line
    assert not (tmp_path / "bad.png").exists()
    assert main(["predict", "--tokenizer", v["data"], "--out", str(tmp_path / "ok.png"),
                 *common]) == 0


def test_a_mismatched_pair_is_never_logged_as_a_model(vocab_pair, tmp_path):
    """register logs the pyfunc from the run's best.pt and tokenizer/: the pair is checked."""
    from components.serving.pyfunc import pyfunc_kwargs

    with pytest.raises(InputError, match=vocab_pair["other_fp"][:12]):
        pyfunc_kwargs(vocab_pair["ckpt"], vocab_pair["other"], "zh", str(tmp_path / "w"))
    kw = pyfunc_kwargs(vocab_pair["ckpt"], vocab_pair["data"], "zh", str(tmp_path / "ok"))
    assert kw["artifacts"]["checkpoint"] == vocab_pair["ckpt"]


class _Warnings(logging.Handler):
    def __init__(self, name: str):
        super().__init__(logging.WARNING)
        self.logger, self.lines = logging.getLogger(name), []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


def test_an_old_checkpoint_without_fingerprint_warns_once_and_goes_on(vocab_pair):
    from components.serving.predictor import RefSegPredictor

    with _Warnings("refseg.vocab") as w:
        for tok in (vocab_pair["data"], vocab_pair["other"]):
            assert RefSegPredictor(vocab_pair["old"], tok, device="cpu").lang == "zh"
    assert len(w.lines) == 1 and "stores no vocabulary fingerprint" in w.lines[0]
    assert vocab_pair["old"] in w.lines[0]


# ------------------------------------------------------------------------------------------------
# 2b. a tokenize folder without its word vectors or its validation split: an error, unless the
# config asks for random embeddings or no validation explicitly
@pytest.fixture(scope="module")
def stripped_data(data_dir, tmp_path_factory):
    """The tokenize folder without ``embeddings_zh.npy`` and without the zh ``val`` shard."""
    from components.data.outputs import seal

    dst = tmp_path_factory.mktemp("stripped") / "tok"
    shutil.copytree(data_dir, dst)
    (dst / "embeddings_zh.npy").unlink()
    (dst / "shards" / "zh" / "val.npz").unlink()
    seal(str(dst), "tokenize")  # complete as written (a tokenize that made neither file)
    return dst


@pytest.mark.parametrize("sets,words", [
    ([], ["embeddings_zh.npy is missing", "train.pretrained_embeddings=false"]),
    (["pretrained_embeddings=false"],
     ["select_split 'val'", "no samples of that split", "train.select_split=null"]),
], ids=["no-embeddings", "no-val-shard"])
def test_train_refuses_a_folder_missing_vectors_or_validation(stripped_data, tmp_path, capsys,
                                                               sets, words):
    flags = [x for kv in sets for x in ("--set", kv)]
    rc = main(["train", "--data", str(stripped_data), "--lang", "zh", "--config", "small",
               "--out", str(tmp_path / "run"), "--set", "steps=1", *flags])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 1 and all(w in line for w in words), line
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()


def test_train_without_vectors_and_validation_when_asked(stripped_data, tmp_path, capsys):
    rc = main(["train", "--data", str(stripped_data), "--lang", "zh", "--config", "small",
               "--out", str(tmp_path / "run"), "--set", "steps=1", "--set", "num_workers=0",
               "--set", "pretrained_embeddings=false", "--set", "select_split=null"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 1, summary


# ------------------------------------------------------------------------------------------------
# 3. a user's mistake with a model URI, a run id or a config file: one line, exit 1
@pytest.fixture()
def registry(tmp_path, monkeypatch):
    """A SQLite MLflow store holding the registered model bilingual-refseg-zh (no versions) and
    one finished run without artifacts."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # a step run in this process earlier (evaluate, register) set MLflow's process-wide URI,
    # which wins over the environment: point it here for this test only
    monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", uri)
    client = mlflow.MlflowClient(uri, uri)
    client.create_registered_model("bilingual-refseg-zh")
    exp = client.create_experiment("bilingual-refseg", artifact_location=(tmp_path / "a").as_uri())
    run = client.create_run(exp)
    client.log_param(run.info.run_id, "lang", "zh")
    client.log_metric(run.info.run_id, "gate_overall_iou_crf", 0.5)
    client.set_terminated(run.info.run_id)
    return {"uri": uri, "bare_run": run.info.run_id}


@pytest.mark.parametrize("model,words", [
    ("models:/bilingual-refseg-zh@nonexistent", ["alias nonexistent not found",
                                                 "bilingual-refseg-zh has aliases: none"]),
    ("models:/bilingual-refseg-xx@champion", ["not found", "no registered model"]),
    ("models:/bilingual-refseg-zh/7", ["not found", "version=7"]),
    ("models:/", ["expected models:/NAME@ALIAS"]),
], ids=["alias", "name", "version", "empty"])
def test_predict_with_an_unknown_model_is_one_line(registry, tmp_path, capsys, model, words):
    image = _png(tmp_path / "scene.png")
    rc = main(["predict", "--model", model, "--image", image, "--text", ZH,
               "--out", str(tmp_path / "m.png")])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 1 and model in line, line
    for w in words:
        assert w in line, line


def test_register_an_unknown_run_is_one_line(registry, capsys):
    rc = main(["register", "--run", "0123456789abcdef0123456789abcdef"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 1 and "run '0123456789abcdef0123456789abcdef': no such run" in line
    rc = main(["register", "--run", registry["bare_run"]])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 1 and f"run {registry['bare_run']} has no artifact 'checkpoints/best.pt'" in line


@pytest.mark.parametrize("content,words", [
    (b"\xff\xfe\x00model: {}\n", "not UTF-8 text"),
    (b"model:\n  input_size: [1, 2\n", "not valid YAML"),
    (b"model: {input_size: 64}\n\t- x\n", "not valid YAML"),
    (b"input_size: abc\n", "input_size must be int, got 'abc'"),
    (b"model:\n  input_size: null\n", "input_size must be int, got None"),
    (b"backbone_widths: 5\n", "backbone_widths must be list[int]"),
    (b"use_le: maybe\n", "use_le must be bool, got 'maybe'"),
    (b"train:\n  lr: fast\n", "lr must be float, got 'fast'"),
    (b"1: 2\nc_v: 8\n", "keys are names, got 1"),
], ids=["not-utf8", "flow", "tab", "int-str", "int-null", "list-int", "bool-str", "float-str",
        "int-key"])
def test_a_malformed_config_file_is_one_line(data_dir, tmp_path, capsys, content, words):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(content)
    rc = main(["train", "--data", str(data_dir), "--lang", "zh", "--config", str(cfg),
               "--out", str(tmp_path / "run"), "--steps", "1"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 1 and words in line, line
    assert not (tmp_path / "run").exists()


def test_a_refused_foreign_parquet_exits_1_every_time(tmp_path):
    """A Parquet file that is not a manifest (a frame a user wrote with pandas, no schema
    metadata): one error line and exit 1 in every run, never an abort at exit (134) from an Arrow
    I/O thread releasing Python memory while the interpreter finalizes."""
    import subprocess

    import pandas as pd

    foreign = tmp_path / "foreign.parquet"
    pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}).to_parquet(foreign)
    code = "import sys; from pipelines.cli import main; sys.exit(main())"
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", code, "check-translations", "--manifest",
                               str(foreign), "--out", str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stderr
        assert "foreign.parquet" in _one_error_line(proc.stderr)


def test_parquet_table_reads_from_its_own_copy():
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"x": [1, 2, 3]}), buf)
    data = buf.getvalue().to_pybytes()
    before = sys.getrefcount(data)
    table = mf.parquet_table(data)
    assert table.column("x").to_pylist() == [1, 2, 3]
    assert sys.getrefcount(data) == before  # nothing of Arrow's holds the caller's bytes


def test_one_line_joins_a_multi_line_message():
    from pipelines.cli import one_line

    text = 'x.yaml: not valid YAML: while parsing\n  in "x.yaml", line 2\n\nexpected ]\n'
    assert one_line(text) == 'x.yaml: not valid YAML: while parsing; in "x.yaml", line 2; ' \
                             "expected ]"
    assert one_line("one line") == "one line"


def test_config_types_are_checked_where_they_are_given():
    from components.training.config import load_run_config
    from model.config import ModelConfig

    # numbers written as strings (YAML reads 1e-3 as one) and an int for a float still load
    m, t, _ = load_run_config("small", {"lr": "1e-3", "steps": "12", "la_sigma": 2})
    assert float(t.lr) == 1e-3 and int(t.steps) == 12 and m.la_sigma == 2
    with pytest.raises(ConfigError, match=r"train config: steps must be int, got 1\.5"):
        load_run_config("small", {"steps": 1.5})
    with pytest.raises(ConfigError, match="memory_cache must be bool, got 1"):
        load_run_config("small", {"memory_cache": 1})
    with pytest.raises(ConfigError, match="levels must be list"):
        ModelConfig(levels="res3")


# ------------------------------------------------------------------------------------------------
# 4. check-translations opens every image once and refuses invisible or over-long text, so that
#    training never dies on a row the checks could have caught
def _png_header_bomb(path: Path, side: int = 50_000) -> str:
    """A PNG of a few dozen bytes whose header says side x side pixels (a decompression bomb:
    Pillow refuses it by its header, nothing is decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return str(path)


def _hostile_image_manifest(synth: Path, root: Path) -> tuple[Path, dict]:
    """The first 12 images of the synthetic set copied under ``root``, then one defect per image
    (every row of it) and per row; returns the manifest and {defect: (rows, check, words)}."""
    from PIL import Image

    df = mf.read_manifest(str(synth / "manifest.parquet"))
    df = df[df["image_id"] < 12].reset_index(drop=True)
    (root / "images").mkdir(parents=True)
    for uri in df["image_uri"].unique():
        shutil.copy(uri, root / "images" / Path(uri).name)
    df["image_uri"] = [str(root / "images" / Path(u).name) for u in df["image_uri"]]
    outside = root.parent / "elsewhere"
    outside.mkdir()
    good = Path(df.at[0, "image_uri"]).read_bytes()
    files = {
        "missing": root / "images" / "gone.png",
        "outside the root": outside / "x.png",
        "symlink out of the root": root / "images" / "link.png",
        "not an image": root / "images" / "notes.png",
        "truncated PNG": root / "images" / "cut.png",
        "decompression bomb": root / "images" / "bomb.png",
        "over the pixel limit": root / "images" / "big.png",
        "a folder": root / "images" / "folder.png",
        "a FIFO": root / "images" / "fifo.png",
        "http scheme": "http://example.com/x.png",
    }
    files["outside the root"].write_bytes(good)
    files["symlink out of the root"].symlink_to(files["outside the root"])
    files["not an image"].write_text("not a picture\n")
    files["truncated PNG"].write_bytes(good[: len(good) // 2])
    _png_header_bomb(files["decompression bomb"])
    Image.new("RGB", (200, 200)).save(files["over the pixel limit"])  # 40,000 > 20,000 px
    files["a folder"].mkdir()
    import os

    os.mkfifo(files["a FIFO"])
    words = {"missing": "missing image", "outside the root": "outside the allowed roots",
             "symlink out of the root": "outside the allowed roots", "not an image":
             "not an image", "truncated PNG": "truncated image", "decompression bomb":
             "too many pixels", "over the pixel limit": "too many pixels",
             "a folder": "not a regular file", "a FIFO": "not a regular file",
             "http scheme": "scheme 'http' is not allowed"}
    planted: dict[str, tuple[list[int], str]] = {}
    for image_id, (defect, target) in zip(range(1, 11), files.items(), strict=True):
        rows = df.index[df["image_id"] == image_id].tolist()
        df.loc[rows, "image_uri"] = str(target)
        planted[defect] = (rows, "image", words[defect])
    r = df.index[df["image_id"] == 11][0]
    m = mf.decode_mask(df.at[r, "mask"])
    df.at[r, "mask"] = mf.encode_mask(np.pad(m, ((0, 2), (0, 0))))
    planted["mask size differs from the image"] = ([r], "image", "mask size differs: the mask "
                                                   "is 130x128 but image")
    r = df.index[df["image_id"] == 0]
    planted["bidi override"] = ([r[0]], "script", "control character: U+202E")
    df.at[r[0], "text_zh"] = "\u202e" + df.at[r[0], "text_zh"]
    planted["NUL"] = ([r[1]], "script", "control character: U+0000 (NULL) in text_en")
    df.at[r[1], "text_en"] = "the\x00" + df.at[r[1], "text_en"]
    k = 10_000 // len(df.at[r[2], "text_en"])
    df.at[r[2], "text_en"] = " ".join([df.at[r[2], "text_en"]] * k)
    df.at[r[2], "text_zh"] = df.at[r[2], "text_zh"] * k
    planted["10,000-character pair"] = ([r[2]], "length", "too long: text_en has")
    return Path(mf.write_manifest(df, str(root / "manifest.parquet"))), planted


def test_check_quarantines_every_image_defect_and_hostile_text(synth_dataset, tmp_path, capsys):
    """One manifest with each image defect (missing, outside the root, through a symlink, not an
    image, truncated, a decompression bomb, over the configured pixel limit, a folder, a FIFO, an
    http:// URI, a mask of another size) and invisible or over-long text: every such row is
    quarantined with a reason naming the image, the others are kept, counts reconcile."""
    import pyarrow.parquet as pq

    manifest, planted = _hostile_image_manifest(Path(synth_dataset), tmp_path / "data")
    out = tmp_path / "check"
    rc = main(["check-translations", "--manifest", str(manifest), "--out", str(out),
               "--max-image-pixels", "20000", "--max-fail-rate", "1", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    df = mf.read_manifest(str(manifest))
    q = pq.read_table(out / "quarantine.parquet").to_pandas()
    reasons = {int(r.row): list(r.reasons) for r in q.itertuples()}
    bad = set()
    for defect, (rows, check, words) in planted.items():
        for i in rows:
            mine = [x for x in reasons.get(i, []) if x.startswith(f"{check}: ") and words in x]
            assert mine, (defect, reasons.get(i))
            if check == "image":  # the reason names the image
                assert all(df.at[i, "image_uri"] in x for x in mine), mine
        bad.update(rows)
    assert set(reasons) == bad  # nothing else quarantined
    clean = mf.read_manifest(str(out / "clean.parquet"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_in"] == len(df) == len(clean) + len(q)
    assert summary["rows_quarantined"] == len(bad) and summary["per_check"]["image"] == len(
        [i for rows, check, _ in planted.values() if check == "image" for i in rows])
    assert set(clean["sample_id"]).isdisjoint(df.loc[sorted(bad), "sample_id"])
    assert summary["config"]["max_image_pixels"] == 20000
    assert summary["images"]["checked"] == df["image_uri"].nunique() == 12
    assert summary["images"]["refused"] == 10


def test_tokenize_keeps_control_characters_out_of_the_vocabulary():
    """When check-translations was skipped, tokenize still refuses a text that keeps a control
    character after normalisation (zero-width characters are removed by normalisation)."""
    from components.text.checks import check_texts, tokenize_texts

    texts = ["红色的\u202e圆形", "红色\x00的圆形", "红色的\u200b圆形", "红色的圆形"]
    norms, toks = tokenize_texts(texts, "zh", workers=1)
    assert check_texts(norms, toks, "zh") == [
        "control character: U+202E (RIGHT-TO-LEFT OVERRIDE) in text_zh",
        "control character: U+0000 (NULL) in text_zh", None, None]


def test_training_loader_names_the_sample_of_a_decompression_bomb(data_dir, tmp_path):
    """A bomb that reached training (a manifest that skipped the checks) is the loader's error
    naming the sample and the image, not a bare Pillow traceback."""
    from components.data.refdata import RefDataError, RefDataset

    bomb = _png_header_bomb(tmp_path / "bomb.png")
    victim = {}

    def plant(df):
        row = df.index[df["split"] == "val"][0]
        rows = df["image_id"] == df.at[row, "image_id"]
        victim["ids"] = set(df.loc[rows & (df["split"] == "val"), "sample_id"])
        df.loc[rows, "image_uri"] = bomb
        return df

    data = _copy_with_manifest(Path(data_dir), tmp_path / "data", plant)
    ds = RefDataset(str(data), "zh", "val", 32)
    index = next(i for i in range(len(ds)) if ds._keys[i][1] == bomb)
    with pytest.raises(RefDataError) as err:
        ds[index]
    msg = str(err.value)
    assert f"image {bomb} is over the pixel limit" in msg
    assert any(f"sample {s!r}" in msg for s in victim["ids"]), msg
