"""components.data.storage on a real S3 endpoint (moto over HTTP) and the manifest's Parquet round trip."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.data import manifest as mf
from components.data import storage


# ------------------------------------------------------------------------------------- storage
def test_s3_round_trip(s3_bucket, tmp_path):
    uri = f"{s3_bucket}/a/b/data.bin"
    payload = bytes(range(256)) * 10
    assert storage.write_bytes(uri, payload) == uri
    assert storage.read_bytes(uri) == payload
    assert storage.exists(uri)
    assert not storage.exists(f"{s3_bucket}/a/b/nothing.bin")
    with pytest.raises(FileNotFoundError, match="nothing.bin"):
        storage.read_bytes(f"{s3_bucket}/a/b/nothing.bin")

    storage.write_bytes(f"{s3_bucket}/a/b/sub/x.txt", b"x")
    storage.write_bytes(f"{s3_bucket}/a/bc/y.txt", b"y")  # sibling prefix: not under a/b
    assert storage.list_files(f"{s3_bucket}/a/b") == [
        f"{s3_bucket}/a/b/data.bin", f"{s3_bucket}/a/b/sub/x.txt"]
    assert storage.list_files(f"{s3_bucket}/a/b/") == storage.list_files(f"{s3_bucket}/a/b")

    # s3 -> local -> s3 -> s3
    assert storage.copy_tree(f"{s3_bucket}/a/b", str(tmp_path / "down")) == 2
    assert (tmp_path / "down" / "sub" / "x.txt").read_bytes() == b"x"
    assert (tmp_path / "down" / "data.bin").read_bytes() == payload
    assert storage.copy_tree(str(tmp_path / "down"), f"{s3_bucket}/up") == 2
    assert storage.copy_tree(f"{s3_bucket}/up", f"{s3_bucket}/up2/") == 2
    assert storage.read_bytes(f"{s3_bucket}/up2/sub/x.txt") == b"x"
    assert storage.list_files(f"{s3_bucket}/up2") == [
        f"{s3_bucket}/up2/data.bin", f"{s3_bucket}/up2/sub/x.txt"]

    local = storage.local_copy(uri, str(tmp_path / "cache"))
    assert open(local, "rb").read() == payload


def test_s3_checksum_metadata_is_stored_and_checked(s3_bucket):
    import boto3

    client = boto3.client("s3", region_name="us-east-1")  # endpoint from AWS_ENDPOINT_URL
    bucket = s3_bucket[5:]
    storage.write_bytes(f"{s3_bucket}/good", b"hello")
    meta = client.head_object(Bucket=bucket, Key="good")["Metadata"]
    assert meta["sha256"] == hashlib.sha256(b"hello").hexdigest()

    client.put_object(Bucket=bucket, Key="bad", Body=b"hello",
                      Metadata={"sha256": hashlib.sha256(b"other").hexdigest()})
    with pytest.raises(storage.StorageError, match=r"s3://.*/bad: checksum mismatch"):
        storage.read_bytes(f"{s3_bucket}/bad")
    # No metadata (object written by another tool): read without the check.
    client.put_object(Bucket=bucket, Key="plain", Body=b"abc")
    assert storage.read_bytes(f"{s3_bucket}/plain") == b"abc"


def test_local_storage(tmp_path):
    target = tmp_path / "x" / "y.bin"
    storage.write_bytes(str(target), b"123")
    assert storage.read_bytes(str(target)) == b"123" and storage.exists(str(target))
    assert not (tmp_path / "x" / "y.bin.part").exists()
    with pytest.raises(FileNotFoundError, match="nope"):
        storage.read_bytes(str(tmp_path / "nope"))
    assert storage.copy_tree(str(tmp_path / "x"), str(tmp_path / "z")) == 1
    assert storage.local_copy(str(target), "unused") == str(target)


@pytest.mark.parametrize(
    "name,words",
    [
        ("../etc/passwd", "'..'"),
        ("a/../../b.jpg", "'..'"),
        ("..\\b.jpg", "'..'"),
        ("/etc/passwd", "absolute"),
        ("C:\\x.jpg", "absolute"),
        ("s3://other/x.jpg", "absolute"),
        ("a\x00b", "NUL"),
        ("  ", "empty"),
    ],
)
def test_safe_name_refuses(name, words):
    with pytest.raises(storage.UnsafePathError, match=words) as err:
        storage.safe_name(name, record="image_id 7")
    assert "image_id 7" in str(err.value)


def test_safe_join():
    assert storage.safe_join("s3://bkt/images", "train/./a.jpg") == "s3://bkt/images/train/a.jpg"
    assert storage.safe_join("/data/img", "a/b.jpg") == "/data/img/a/b.jpg"
    assert storage.safe_name("a\\b.jpg") == "a/b.jpg"
    with pytest.raises(storage.UnsafePathError, match="names no file"):
        storage.safe_join("/data/img", "./")


def _put_raw(bucket_uri: str, key: str, body: bytes) -> None:
    """An object under ``key`` exactly as given (another tool wrote it; S3 keeps '..' as is)."""
    import boto3

    boto3.client("s3", region_name="us-east-1").put_object(Bucket=bucket_uri[5:], Key=key,
                                                            Body=body)


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("key", ["imgs/../../../escaped/x.png",
                                 "imgs\\..\\..\\..\\escaped\\x.png",
                                 "{root}/escaped/x.png"], ids=["dotdot", "backslash", "absolute"])
def test_local_copy_never_writes_outside_its_cache(s3_bucket, tmp_path, key):
    """An image_uri such as s3://bucket/imgs/../../../<folder>/x.png in a manifest: the object is
    not cached outside cache_dir; the error names the URI. (The absolute key points into
    tmp_path: should it escape, it lands where the test sees it.)"""
    key = key.format(root=tmp_path)  # tmp_path is absolute: the key starts with '/'
    _put_raw(s3_bucket, key, b"payload")
    uri = f"{s3_bucket}/{key}"
    cache = tmp_path / "work" / "cache"
    with pytest.raises(storage.UnsafePathError) as err:
        storage.local_copy(uri, str(cache))
    assert uri in str(err.value)
    assert _files(tmp_path) == []
    # a plain key still lands inside the cache
    _put_raw(s3_bucket, "imgs/ok.png", b"ok")
    got = storage.local_copy(f"{s3_bucket}/imgs/ok.png", str(cache))
    assert got == str(cache / s3_bucket[5:] / "imgs" / "ok.png") and open(got, "rb").read() == b"ok"


def test_copy_tree_never_writes_outside_its_destination(s3_bucket, tmp_path):
    _put_raw(s3_bucket, "out/a.txt", b"a")
    _put_raw(s3_bucket, "out/../../escaped.txt", b"x")
    dst = tmp_path / "dst" / "inner"
    with pytest.raises(storage.UnsafePathError, match=r"escaped\.txt"):
        storage.copy_tree(s3_bucket, str(dst))
    assert "escaped.txt" not in " ".join(_files(tmp_path))


# ------------------------------------------------------------------------------------ manifest
def _manifest(n: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        m = (rng.random((6, 8)) > 0.5).astype(np.uint8)
        rows.append({
            "sample_id": f"refcoco/unc/sent_{i}", "dataset": "refcoco", "split": "train",
            "image_id": 10 + i, "image_uri": f"s3://b/img{i}.jpg", "ref_id": 100 + i,
            "ann_id": 1000 + i, "category": "dog", "bbox": [1.0, 2.0, 3.5, 4.0],
            "mask": mf.encode_mask(m), "text_en": f"dog {i}",
            "text_zh": None if i == 1 else f"狗{i}", "sent_id": 5000 + i,
        })
    return pd.DataFrame(rows, dtype=object)  # object: keep None (pandas 3 str dtype makes NaN)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_manifest_round_trip(where, tmp_path, request):
    base = str(tmp_path) if where == "local" else request.getfixturevalue("s3_bucket")
    df = _manifest()
    uri = storage.join(base, "m", "manifest.parquet")
    mf.write_manifest(df, uri)
    back = mf.read_manifest(uri)
    assert list(back.columns) == [*mf.COLUMNS, "sent_id"]
    assert back.drop(columns=["mask"]).to_dict("records") == df.drop(columns=["mask"]).to_dict(
        "records")
    assert back["mask"].tolist() == df["mask"].tolist()
    for a, b in zip(back["mask"], df["mask"], strict=True):
        np.testing.assert_array_equal(mf.decode_mask(a), mf.decode_mask(b))
    assert back.loc[1, "text_zh"] is None


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def test_manifest_schema_version_missing_is_assumed_with_a_warning(tmp_path, caplog):
    table = mf.to_table(_manifest())
    path = tmp_path / "nov.parquet"
    path.write_bytes(_parquet_bytes(table.replace_schema_metadata({})))
    with caplog.at_level("WARNING", logger="refseg"):
        back = mf.read_manifest(str(path))
    assert "no refseg.schema_version in its Parquet metadata" in caplog.text
    assert "assuming version 1" in caplog.text
    assert back.to_dict("list") == mf.read_manifest(mf.write_manifest(
        _manifest(), str(tmp_path / "ok.parquet"))).to_dict("list")
    path.write_bytes(_parquet_bytes(table.replace_schema_metadata(
        {mf.SCHEMA_VERSION_KEY: b"99"})))
    with pytest.raises(mf.ManifestError, match="schema version 99 is not supported"):
        mf.read_manifest(str(path))


def test_a_manifest_edited_with_pandas_reads_back_the_same(tmp_path, capsys):
    """Read with pandas, a column changed, written with ``to_parquet`` (no schema metadata, strings
    as large_string, nested values as numpy arrays): read back equal, and check-translations
    takes it (with the warning on stderr)."""
    from pipelines.cli import main

    ours = mf.write_manifest(_manifest(), str(tmp_path / "ours.parquet"))
    df = pd.read_parquet(ours)
    df["text_en"] = df["text_en"].str.replace("dog", "puppy")
    edited = tmp_path / "edited.parquet"
    df.to_parquet(edited)
    assert pa.types.is_large_string(pq.read_schema(edited).field("sample_id").type)
    want = mf.read_manifest(ours)
    want["text_en"] = want["text_en"].str.replace("dog", "puppy")
    assert want["text_en"][0] == "puppy 0"
    assert mf.read_manifest(str(edited)).to_dict("list") == want.to_dict("list")

    rc = main(["check-translations", "--manifest", str(edited), "--out", str(tmp_path / "chk"),
               "--max-fail-rate", "1"])
    err = capsys.readouterr().err
    assert rc == 0 and "assuming version 1" in err, err


def test_an_edited_manifest_with_a_column_of_another_kind_is_one_line(tmp_path):
    df = pd.read_parquet(mf.write_manifest(_manifest(), str(tmp_path / "ours.parquet")))
    df["image_id"] = df["image_id"].astype(str)
    df.to_parquet(tmp_path / "edited.parquet")
    with pytest.raises(mf.ManifestError, match="column 'image_id' has type large_string, "
                                               "expected int64"):
        mf.read_manifest(str(tmp_path / "edited.parquet"))


def test_manifest_wrong_column_type_names_column(tmp_path):
    table = mf.to_table(_manifest())
    i = table.column_names.index("image_id")
    bad = table.set_column(i, pa.field("image_id", pa.string()),
                           pa.array([str(v) for v in table["image_id"].to_pylist()]))
    path = tmp_path / "bad.parquet"
    path.write_bytes(_parquet_bytes(bad.replace_schema_metadata(table.schema.metadata)))
    with pytest.raises(mf.ManifestError, match="column 'image_id' has type string, expected int64"):
        mf.read_manifest(str(path))

    dropped = table.drop_columns(["text_zh"]).replace_schema_metadata(table.schema.metadata)
    path.write_bytes(_parquet_bytes(dropped))
    with pytest.raises(mf.ManifestError, match="missing column 'text_zh'"):
        mf.read_manifest(str(path))

    path.write_bytes(b"not parquet")
    with pytest.raises(mf.ManifestError, match="not a Parquet file"):
        mf.read_manifest(str(path))


@pytest.mark.parametrize(
    "column,value,words",
    [
        ("image_id", "12", "column 'image_id', row 0: expected an integer id"),
        ("bbox", [1.0, 2.0], "column 'bbox', row 0: expected 4 numbers"),
        ("mask", {"counts": "abc"}, "column 'mask', row 0: expected a COCO RLE"),
        ("mask", {"foo": 1}, "column 'mask', row 0: expected a COCO RLE"),
        ("mask", {"size": [0, 3], "counts": "a"}, "column 'mask', row 0: RLE size"),
        ("split", "", "column 'split', row 0: expected a non-empty string"),
        ("text_en", 5, "column 'text_en', row 0: expected a string or null"),
    ],
)
def test_manifest_validate_names_column(column, value, words):
    df = _manifest(1)
    df[column] = pd.Series([value], dtype=object)
    with pytest.raises(mf.ManifestError) as err:
        mf.validate(df)
    assert words in str(err.value)


def test_manifest_duplicate_and_missing_columns():
    df = pd.concat([_manifest(1), _manifest(1)], ignore_index=True)
    with pytest.raises(mf.ManifestError, match="duplicate id"):
        mf.validate(df)
    with pytest.raises(mf.ManifestError, match="missing column\\(s\\): text_zh"):
        mf.validate(_manifest(1).drop(columns=["text_zh"]))
