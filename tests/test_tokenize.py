"""The tokenize step and components.text.zh: segmentation with the user dictionary, vocabulary and
encoding round trips, truncation, word-vector files in three formats and their errors, coverage,
the trained word2vec fallback, quarantine, determinism, s3. Budget: under 60 s."""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from components.data import manifest as mf
from components.data import storage
from components.text import zh
from components.text.tokenizer import detect_language, load_tokenizer
from components.text.vectors import VectorFileError, detect_vector_format, load_vectors
from components.tokenize import tokenize

SMALL = {"zh_dim": 16, "en_dim": 16}  # small trained vectors keep the tests fast


def _manifest(path: Path, pairs: list[tuple[str, str | None, str | None]]) -> str:
    """A valid manifest from (split, text_en, text_zh) triples."""
    rle = mf.encode_mask(np.eye(8, dtype=np.uint8))
    rows = [
        {"sample_id": f"t/{i:04d}", "dataset": "t", "split": split, "image_id": i,
         "image_uri": f"/img/{i}.png", "ref_id": i, "ann_id": i, "category": "circle",
         "bbox": [0.0, 0.0, 8.0, 8.0], "mask": rle, "text_en": en, "text_zh": zh_}
        for i, (split, en, zh_) in enumerate(pairs)
    ]
    uri = str(path / "manifest.parquet")
    mf.write_manifest(pd.DataFrame(rows), uri)
    return uri


BASE = [
    ("train", "the red circle on the left", "左边的红色圆形"),
    ("train", "the man's white shirt", "穿米白色衬衫的男人"),
    ("train", "a donut next to the stop sign", "停车标志旁边的甜甜圈"),
    ("train", "the red circle on the left", "左边的红色圆形"),
    ("train", "blue square", "蓝色正方形"),
    ("val", "the green triangle above the blue square", "蓝色正方形上面的绿色三角形"),
    ("val", "zebra", "斑马"),
]


def _load_npz(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ------------------------------------------------------------------------------------------------
def test_user_dictionary_keeps_words_whole(tmp_path):
    assert zh.segment("穿米白色衬衫的男人") == ["穿", "米白色", "衬衫", "的", "男人"]
    # without it the HMM glues the stray character to its neighbour
    assert zh.segment("穿米白色衬衫的男人", project_dict=False) == ["穿米", "白色", "衬衫", "的",
                                                                    "男人"]
    assert zh.segment("停车标志旁边的甜甜圈") == ["停车标志", "旁边", "的", "甜甜圈"]
    assert zh.segment("停车标志旁边的甜甜圈", project_dict=False) == ["停车", "标志", "旁边", "的",
                                                                    "甜甜", "圈"]
    assert zh.segment("最左边的紫色菱形") == ["最左边", "的", "紫色", "菱形"]
    assert zh.segment("最左边的紫色菱形", project_dict=False) == ["最", "左边", "的", "紫色", "菱形"]
    # user-extendable (--zh-userdict): an extra file on top of the project's
    extra = tmp_path / "extra.txt"
    extra.write_text("小圆形\n红衣男子 5 n\n", encoding="utf-8")
    text = "小圆形旁边的红衣男子"
    assert zh.segment(text) == ["小", "圆形", "旁边", "的", "红衣", "男子"]
    assert zh.segment(text, extra_userdicts=[str(extra)]) == ["小圆形", "旁边", "的", "红衣男子"]
    # the private tokenizers leave jieba's global one untouched
    import jieba

    assert jieba.lcut("米白色") == ["米", "白色"]


def test_normalisation_and_english_tokens():
    assert zh.normalize_zh(" ＡＢＣ， 红色　的 圆形。「左边」 ") == 'ABC, 红色的圆形."左边"'
    assert zh.segment("（左边）的，红色圆形！！") == ["左边", "的", "红色", "圆形"]
    assert zh.normalize_zh(None) == "" and zh.segment("   。") == []
    assert zh.english_tokens("The MAN’s red-shirt, on the LEFT!  don't 'go'") == [
        "the", "man's", "red", "shirt", "on", "the", "left", "don't", "go"]
    assert zh.english_tokens("ＲＥＤ ２nd") == ["red", "2nd"]
    assert detect_language("左边的红色圆形") == "zh"
    assert detect_language("the red circle") == "en"
    assert detect_language("穿白色T恤的女孩") == "zh"


def test_segment_many_pool_matches_serial():
    texts = [f"{c}的{s}" for c in ("红色", "深蓝色", "米白色") for s in ("圆形", "甜甜圈", "斑马")] * 5
    texts += [None, "", "左上角的 热狗"]
    serial = [zh.segment(t) for t in texts]
    assert zh.segment_many(texts, workers=1) == serial
    assert zh.segment_many(texts, workers=2, pool_threshold=1) == serial


# ------------------------------------------------------------------------------------------------
def test_outputs_round_trip_and_truncation(tmp_path):
    uri = _manifest(tmp_path, BASE)
    out = tmp_path / "out"
    s = tokenize(uri, str(out), max_len_en=3, max_len_zh=4, **SMALL)
    for name in ("manifest.parquet", "vocab_zh.json", "vocab_en.json", "embeddings_zh.npy",
                 "embeddings_en.npy", "tokenizer.json", "quarantine.parquet", "summary.json",
                 "shards/zh/train.npz", "shards/en/val.npz"):
        assert (out / name).is_file(), name
    vocab_en = json.loads((out / "vocab_en.json").read_text())
    assert vocab_en[:3] == ["<pad>", "<unk>", "the"]  # specials, then by training count
    en_train = [zh.english_tokens(e) for sp, e, _ in BASE if sp == "train"]
    assert len(vocab_en) == 2 + len({w for t in en_train for w in t})
    emb = np.load(out / "embeddings_en.npy")
    assert emb.dtype == np.float32 and emb.shape == (len(vocab_en), 16)
    assert not emb[0].any()

    tok = load_tokenizer(str(out))
    for lang, col, T in (("en", 1, 3), ("zh", 2, 4)):
        vocab = json.loads((out / f"vocab_{lang}.json").read_text())
        for split in ("train", "val"):
            sh = _load_npz(out / "shards" / lang / f"{split}.npz")
            rows = [r for r in BASE if r[0] == split]
            assert sh["tokens"].dtype == np.int32 and sh["tokens"].shape == (len(rows), T)
            assert sh["sample_id"].dtype.kind == "U"
            n_trunc = 0
            for i, r in enumerate(rows):
                words = tok.tokens(r[col], lang)
                n_trunc += len(words) > T
                ln = int(sh["lengths"][i])
                assert ln == min(len(words), T)
                assert not sh["tokens"][i, ln:].any()  # 0-padded
                back = [vocab[j] for j in sh["tokens"][i, :ln]]
                assert back == [w if w in vocab else "<unk>" for w in words[:T]]
                ids, length = tok.encode(r[col], lang)
                assert (ids, length) == (sh["tokens"][i].tolist(), ln)
            assert s["truncated"][lang][split] == n_trunc
    assert s["truncated"]["en"]["train"] == 4 and s["truncated"]["zh"]["train"] == 1
    # "zebra"/"斑马" are not in the training vocabulary -> <unk>
    assert tok.encode("zebra", "en") == ([1, 0, 0], 1)
    assert tok.encode("斑马", "zh") == ([1, 0, 0, 0], 1)
    # Table 1 style lengths on the kept rows, before truncation
    train_zh = [zh.segment(z) for sp, _, z in BASE if sp == "train"]
    assert s["avg_length"]["train"]["zh_words"] == pytest.approx(np.mean([len(t) for t in train_zh]),
                                                                 abs=1e-3)
    assert s["avg_length"]["train"]["zh_chars"] == pytest.approx(
        np.mean([len("".join(t)) for t in train_zh]), abs=1e-3)
    assert s["avg_length"]["train"]["en_words"] == pytest.approx(
        np.mean([len(t) for t in en_train]), abs=1e-3)
    cfg = json.loads((out / "tokenizer.json").read_text())
    assert cfg["max_len"] == {"zh": 4, "en": 3} and cfg["dims"] == {"zh": 16, "en": 16}
    assert s["timings"]["total_s"] > 0 and "vectors_train_zh_s" in s["timings"]


# ------------------------------------------------------------------------------------------------
def _write_w2v_text(path, vecs: dict, header=True):
    dim = len(next(iter(vecs.values())))
    lines = [f"{len(vecs)} {dim}"] if header else []
    lines += [w + " " + " ".join(f"{x:.6f}" for x in v) for w, v in vecs.items()]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_w2v_binary(path, vecs: dict):
    dim = len(next(iter(vecs.values())))
    with open(path, "wb") as fh:
        fh.write(f"{len(vecs)} {dim}\n".encode())
        for w, v in vecs.items():
            fh.write(w.encode() + b" " + struct.pack(f"<{dim}f", *v) + b"\n")


def _vecs(words, dim, seed):
    rng = np.random.default_rng(seed)
    return {w: rng.normal(0, 0.5, dim).astype(np.float32).tolist() for w in words}


def test_pretrained_vectors_three_formats_and_coverage(tmp_path):
    uri = _manifest(tmp_path, BASE)
    zh_words = ["左边", "的", "红色", "圆形", "甜甜圈", "不在词表"]  # 5 of them in the vocabulary
    en_words = ["the", "red", "circle", "shirt", "unused"]
    zv, ev = _vecs(zh_words, 8, 1), _vecs(en_words, 6, 2)
    files = {"w2v-text": tmp_path / "zh.txt", "w2v-binary": tmp_path / "zh.bin",
             "glove": tmp_path / "en.glove.txt"}
    _write_w2v_text(files["w2v-text"], zv)
    _write_w2v_binary(files["w2v-binary"], zv)
    _write_w2v_text(files["glove"], ev, header=False)
    for fmt, path in files.items():
        assert detect_vector_format(str(path)) == fmt
        kv, got = load_vectors(str(path))
        assert got == fmt and kv.vector_size == (6 if fmt == "glove" else 8)
        ref = ev if fmt == "glove" else zv
        np.testing.assert_allclose(kv["red" if fmt == "glove" else "红色"],
                                   ref["red" if fmt == "glove" else "红色"], atol=1e-6)

    for zfile in (files["w2v-text"], files["w2v-binary"]):
        out = tmp_path / f"out-{zfile.suffix}"
        s = tokenize(uri, str(out), zh_vectors=str(zfile), en_vectors=str(files["glove"]),
                     zh_dim=8)
        vz = json.loads((out / "vocab_zh.json").read_text())
        ez = np.load(out / "embeddings_zh.npy")
        assert ez.shape == (len(vz), 8)
        np.testing.assert_allclose(ez[vz.index("甜甜圈")], zv["甜甜圈"], atol=1e-6)
        assert not ez[0].any()
        # coverage: types and token occurrences of the training split found in the file
        train = [zh.segment(z) for sp, _, z in BASE if sp == "train"]
        counts = Counter(w for t in train for w in t)
        found = [w for w in counts if w in zv]
        cov = s["langs"]["zh"]["vectors"]
        assert cov["types_found"] == len(found) == 5
        assert cov["coverage_types"] == pytest.approx(len(found) / len(counts), abs=1e-6)
        assert cov["coverage_tokens"] == pytest.approx(
            sum(counts[w] for w in found) / sum(counts.values()), abs=1e-6)
        assert cov["format"] in ("w2v-text", "w2v-binary") and cov["source"] == str(zfile)
        # unknown words: seeded normal with the vectors' std
        std = float(np.std(np.array(list(zv.values()), dtype=np.float64)))
        assert cov["unknown_init"]["std"] == pytest.approx(std, abs=1e-5)
        unknown_rows = [i for i, w in enumerate(vz) if i > 0 and w not in zv]
        assert 0.3 * std < ez[unknown_rows].std() < 3 * std
    en = s["langs"]["en"]["vectors"]
    assert en["format"] == "glove" and s["langs"]["en"]["dim"] == 6
    assert en["types_found"] == 4  # the red circle shirt


def test_malformed_vector_files_and_dimension_mismatch(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("3 4\na 0.1 0.2 0.3 0.4\nb 0.1 0.2 0.3\nc 1 2 3 4\n")
    with pytest.raises(VectorFileError, match=r"bad\.txt.*line 3 \(word 'b'\): 3 values, expected 4"):
        load_vectors(str(bad), label="--zh-vectors")
    nan = tmp_path / "nan.txt"
    nan.write_text("a 0.1 0.2\nb 0.3 zero\n")
    with pytest.raises(VectorFileError, match=r"nan\.txt \(glove\).*line 2.*'zero' is not a number"):
        load_vectors(str(nan))
    short = tmp_path / "short.txt"
    short.write_text("5 2\na 0.1 0.2\nb 0.3 0.4\n")
    with pytest.raises(VectorFileError, match=r"short\.txt.*declares 5 vectors, the file holds 2"):
        load_vectors(str(short))
    cut = tmp_path / "cut.bin"
    _write_w2v_binary(cut, _vecs(["a", "b", "c"], 4, 0))
    cut.write_bytes(cut.read_bytes()[:-10])
    with pytest.raises(VectorFileError, match=r"cut\.bin \(w2v-binary\).*entry 3 of 3"):
        load_vectors(str(cut))
    good = tmp_path / "good.txt"
    _write_w2v_text(good, _vecs(["红色", "圆形"], 4, 0))
    uri = _manifest(tmp_path, BASE)
    with pytest.raises(VectorFileError, match=r"--zh-vectors .*good\.txt.*dimension 4, expected 256"):
        tokenize(uri, str(tmp_path / "o"), zh_vectors=str(good), zh_dim=256)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        tokenize(uri, str(tmp_path / "o"), en_vectors=str(tmp_path / "missing.txt"), **SMALL)


# ------------------------------------------------------------------------------------------------
def test_trained_fallback_puts_near_synonyms_together(synth_dataset, tmp_path):
    out = tmp_path / "out"
    s = tokenize(str(Path(synth_dataset) / "manifest.parquet"), str(out), zh_dim=64, en_dim=64)
    groups = {
        "en": [["red", "green", "blue", "yellow", "purple"], ["circle", "square", "triangle",
                                                              "diamond"], ["left", "right"]],
        "zh": [["红色", "绿色", "蓝色", "黄色", "紫色"], ["圆形", "正方形", "三角形", "菱形"],
               ["最左边", "最右边", "最上面", "最下面"]],
    }
    for lang, grps in groups.items():
        assert s["langs"][lang]["vectors"]["source"] == "trained"
        assert s["langs"][lang]["vectors"]["coverage_types"] == 1.0
        vocab = json.loads((out / f"vocab_{lang}.json").read_text())
        E = np.load(out / f"embeddings_{lang}.npy")
        E = E / np.linalg.norm(E, axis=1, keepdims=True).clip(1e-9)

        def cos(a, b, vocab=vocab, E=E):
            return float(E[vocab.index(a)] @ E[vocab.index(b)])

        within = [cos(a, b) for g in grps for i, a in enumerate(g) for b in g[i + 1:]]
        cross = [cos(a, b) for gi, g in enumerate(grps) for h in grps[gi + 1:] for a in g for b in h]
        assert np.mean(within) > np.mean(cross) + 0.1, (lang, np.mean(within), np.mean(cross))


def test_bad_input_is_quarantined_with_reason(tmp_path):
    rows = BASE + [
        ("train", "the red circle", "。。。"),                       # zh empty after normalisation
        ("train", "blue square", "красный круг"),                   # zh in Cyrillic
        ("val", "红色圆形", "红色圆形"),                             # en column without Latin
        ("train", "a" * 40 + " circle", "圆形"),                     # absurd token
        ("val", None, "圆形"),                                      # missing English
    ]
    uri = _manifest(tmp_path, rows)
    out = tmp_path / "out"
    s = tokenize(uri, str(out), **SMALL)
    q = pq.read_table(out / "quarantine.parquet").to_pandas()
    assert list(q.columns[:3]) == ["sample_id", "lang", "reason"]
    got = {(r.sample_id, r.lang): r.reason for r in q.itertuples()}
    assert got["t/0007", "zh"] == "empty after normalisation"
    assert got["t/0008", "zh"] == "wrong script: no Chinese characters (mostly CYRILLIC)"
    assert got["t/0009", "en"] == "wrong script: no Latin letters (mostly CJK)"
    assert got["t/0010", "en"].startswith("token longer than 30 characters: 'aaaa")
    assert got["t/0011", "en"] == "empty after normalisation"
    assert len(got) == 5
    assert s["rows"] == {"in": 12, "kept": 7, "quarantined": 5}
    c = s["counts"]
    assert c["train"]["rows"] == {"in": 8, "kept": 5, "quarantined": 3}
    assert c["train"]["zh"] == {"in": 8, "kept": 5, "quarantined": 2, "dropped_for_other_language": 1}
    assert c["val"]["en"] == {"in": 4, "kept": 2, "quarantined": 2, "dropped_for_other_language": 0}
    kept = mf.read_manifest(str(out / "manifest.parquet"))
    assert kept["sample_id"].tolist() == [f"t/{i:04d}" for i in range(7)]
    for lang in ("zh", "en"):
        ids = np.concatenate([_load_npz(out / "shards" / lang / f"{sp}.npz")["sample_id"]
                              for sp in ("train", "val")])
        assert sorted(ids.tolist()) == kept["sample_id"].tolist()
    assert "красный" not in json.loads((out / "vocab_zh.json").read_text())


def test_same_seed_same_bytes(tmp_path):
    uri = _manifest(tmp_path, BASE)
    a, b, c = (tmp_path / n for n in ("a", "b", "c"))
    tokenize(uri, str(a), seed=3, **SMALL)
    tokenize(uri, str(b), seed=3, **SMALL)
    tokenize(uri, str(c), seed=4, **SMALL)
    for name in ("embeddings_zh.npy", "embeddings_en.npy", "shards/zh/train.npz",
                 "shards/en/val.npz", "vocab_zh.json", "tokenizer.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "embeddings_zh.npy").read_bytes() != (c / "embeddings_zh.npy").read_bytes()


def test_s3_round_trip_and_cli(s3_bucket, tmp_path, capsys):
    uri = _manifest(tmp_path, BASE)
    s3_manifest = f"{s3_bucket}/in/manifest.parquet"
    storage.write_bytes(s3_manifest, Path(uri).read_bytes())
    s3_out = f"{s3_bucket}/tok"
    glove = tmp_path / "en.txt"
    _write_w2v_text(glove, _vecs(["the", "red", "circle"], 5, 0), header=False)
    s3_vec = f"{s3_bucket}/vec/en.txt"
    storage.write_bytes(s3_vec, glove.read_bytes())
    s = tokenize(s3_manifest, s3_out, en_vectors=s3_vec, langs=("en",), en_dim=5)
    names = {f[len(s3_out) + 1:] for f in storage.list_files(s3_out)}
    assert {"manifest.parquet", "vocab_en.json", "embeddings_en.npy", "shards/en/train.npz",
            "shards/en/val.npz", "tokenizer.json", "quarantine.parquet", "summary.json"} <= names
    assert "vocab_zh.json" not in names
    summary = json.loads(storage.read_bytes(f"{s3_out}/summary.json"))
    assert summary["rows"] == s["rows"] and "upload_s" in summary["timings"]
    assert len(mf.read_manifest(f"{s3_out}/manifest.parquet")) == len(BASE)
    tok = load_tokenizer(s3_out)
    assert tok.langs == ("en",)
    assert tok.decode(tok.encode("The red circle!", "en")[0], "en") == ["the", "red", "circle"]

    from pipelines.cli import main

    out = tmp_path / "cli"
    rc = main(["tokenize", "--manifest", uri, "--out", str(out), "--zh-dim", "8", "--en-dim", "8",
               "--max-len-en", "4", "--zh-userdict", str(tmp_path / "nope.txt")])
    assert rc == 1 and "nope.txt: no such file" in capsys.readouterr().err
    rc = main(["tokenize", "--manifest", uri, "--out", str(out), "--zh-dim", "8", "--en-dim", "8",
               "--max-len-en", "4"])
    captured = capsys.readouterr()
    assert rc == 0 and "7 kept, 0 quarantined" in captured.out
    assert "[tokenize] segmenting 7 zh texts" in captured.err
    assert _load_npz(out / "shards/en/train.npz")["tokens"].shape == (5, 4)
