"""Outputs a rerun can trust: the completion marker each step writes last and the next step
checks, re-tokenizing into an existing folder, the verified S3 cache, temporary folders of failed
S3 runs, and test servers that die with the test process. Budget: under 20 s."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from components.data import manifest as mf
from components.data import outputs, storage
from components.data.outputs import MARKER, IncompleteOutputError
from components.text.tokenized import TokenizedData
from tests.test_tokenize import BASE, _manifest

ROOT = Path(__file__).resolve().parents[1]
TINY = {"zh_dim": 8, "en_dim": 8, "w2v_epochs": 1}


def _tokenize(manifest: str, out: str, **kw) -> dict:
    from components.tokenize import tokenize

    return tokenize(manifest, out, **{**TINY, **kw})


def _refused(folder: str) -> str:
    with pytest.raises(IncompleteOutputError) as err:
        TokenizedData.checked(folder)
    msg = str(err.value)
    assert "\n" not in msg and f"tokenize output {folder}" in msg
    return msg


# ------------------------------------------------------------------------------------------------
# 1. the marker: written last, listing what the run wrote; the reader checks it
def test_marker_lists_the_files_and_the_reader_refuses_what_it_does_not_vouch_for(
        tmp_path, monkeypatch, capsys):
    out = tmp_path / "tok"
    _tokenize(_manifest(tmp_path, BASE), str(out), langs=("en",))
    marker = json.loads((out / MARKER).read_text())
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {MARKER}
    assert marker["step"] == "tokenize" and set(marker["files"]) == on_disk
    assert {"summary.json", "shards/en/val.npz", "vocab_en.json"} <= on_disk
    assert marker["files"]["vocab_en.json"]["size"] == (out / "vocab_en.json").stat().st_size
    assert marker["fingerprint"] == outputs.fingerprint(marker["files"])
    assert TokenizedData.checked(str(out)).splits("en") == ["train", "val"]

    shard = out / "shards" / "en" / "val.npz"
    good = shard.read_bytes()
    shard.write_bytes(good[:-7])  # cut short
    assert "shards/en/val.npz has" in _refused(str(out))
    shard.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size, other bytes
    assert "shards/en/val.npz does not match _COMPLETE.json" in _refused(str(out))
    shard.unlink()
    assert "shards/en/val.npz (listed in _COMPLETE.json) is missing" in _refused(str(out))
    shard.write_bytes(good)
    (out / MARKER).unlink()  # the writer did not finish
    assert "is incomplete: no _COMPLETE.json (the step that wrote it did not finish" in \
        _refused(str(out))

    # the train step refuses it on one line, before reading anything else
    from pipelines.cli import main

    capsys.readouterr()  # the tokenize step's log lines
    rc = main(["train", "--data", str(out), "--lang", "en", "--config", "small",
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and f"tokenize output {out} is incomplete" in err[0]
    assert not (tmp_path / "run").exists()
    # a folder written before markers existed: read, with a warning, only when allowed
    monkeypatch.setenv(outputs.ALLOW_UNMARKED, "1")
    assert TokenizedData.checked(str(out)).root == str(out)
    assert "has no _COMPLETE.json; read anyway" in capsys.readouterr().err


def test_tokenize_refuses_a_manifest_changed_after_its_step_finished(tmp_path):
    folder = tmp_path / "checked"
    folder.mkdir()
    clean = mf.write_manifest(mf.read_manifest(_manifest(tmp_path, BASE)),
                              str(folder / "clean.parquet"))
    outputs.seal(str(folder), "check-translations")
    df = mf.read_manifest(clean)
    mf.write_manifest(df.iloc[:-1], clean)  # a row lost after the checks
    with pytest.raises(IncompleteOutputError, match=r"check-translations output .*checked: "
                                                    r"clean\.parquet does not match"):
        _tokenize(clean, str(tmp_path / "tok"))
    assert not (tmp_path / "tok").exists()


# ------------------------------------------------------------------------------------------------
# 2. re-tokenizing one language into an existing folder leaves no file of the other
@pytest.mark.parametrize("where", ["local", "s3"])
def test_retokenizing_one_language_removes_the_other(where, tmp_path, request):
    manifest = _manifest(tmp_path, BASE)
    out = (request.getfixturevalue("s3_bucket") + "/tok") if where == "s3" else str(tmp_path / "t")
    _tokenize(manifest, out)
    names = set(storage.list_sizes(out))
    assert {"vocab_en.json", "embeddings_en.npy", "shards/en/train.npz", "vocab_zh.json"} <= names
    _tokenize(manifest, out, langs=("zh",))
    names = set(storage.list_sizes(out))
    assert not [n for n in names if n.startswith("shards/en/") or n.endswith(("_en.json",
                                                                            "_en.npy"))], names
    marker = json.loads(storage.read_bytes(storage.join(out, MARKER)))
    assert set(marker["files"]) == names - {MARKER}
    if where == "local":
        assert not (tmp_path / "t" / "shards" / "en").exists()
    data = TokenizedData.checked(out)
    assert data.tokenizer().langs == ("zh",)
    # a stale shard put back by hand is not read as a split: the folder is refused
    storage.write_bytes(storage.join(out, "shards", "zh", "testC.npz"), b"stale")
    assert "shards/zh/testC.npz is not listed in _COMPLETE.json" in _refused(out)


# ------------------------------------------------------------------------------------------------
# 3. an S3 output: the marker goes first and comes last; failed runs leave no temporary folder
def _temp_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("refseg-"))


def test_a_failed_s3_run_leaves_no_marker_and_no_temporary_folder(s3_bucket, tmp_path,
                                                                   monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    uri = f"{s3_bucket}/out"
    with outputs.step_output(uri, "demo") as out:
        Path(out.local, "a.txt").write_text("first")
    assert outputs.check_complete(uri, "demo")["files"]["a.txt"]["size"] == 5

    with pytest.raises(RuntimeError, match="mid-way"):  # fails after its files were uploaded
        with outputs.step_output(uri, "demo") as out:
            Path(out.local, "a.txt").write_text("second")
            out.publish()
            raise RuntimeError("mid-way")
    with pytest.raises(IncompleteOutputError, match=f"demo output {uri} is incomplete: no "):
        outputs.check_complete(uri, "demo")
    assert _temp_dirs(tmp) == []

    # a step that fails mid-way: tokenize with word vectors of the wrong size
    manifest = _manifest(tmp_path, BASE)
    vec = f"{s3_bucket}/vec.txt"
    storage.write_bytes(vec, b"the 0.1 0.2\nred 0.3 0.4\n")
    with pytest.raises(Exception, match="dimension"):
        _tokenize(manifest, f"{s3_bucket}/tok", langs=("en",), en_vectors=vec, en_dim=5)
    assert storage.list_files(f"{s3_bucket}/tok") == [] and _temp_dirs(tmp) == []

    # a tokenizer folder read from S3, whether the read fails or not
    _tokenize(manifest, f"{s3_bucket}/tok", langs=("en",))
    from components.text.tokenizer import load_tokenizer

    assert load_tokenizer(f"{s3_bucket}/tok").langs == ("en",)
    storage.delete(f"{s3_bucket}/tok/vocab_en.json")
    with pytest.raises(FileNotFoundError, match="no vocabulary for language 'en'"):
        load_tokenizer(f"{s3_bucket}/tok")
    assert _temp_dirs(tmp) == []


# ------------------------------------------------------------------------------------------------
# 4. the S3 cache: atomic downloads, a cached file trusted only when it matches its object
def test_cached_copy_is_verified_against_its_object(s3_bucket, tmp_path):
    uri, cache = f"{s3_bucket}/w/weights.bin", tmp_path / "cache"
    storage.write_bytes(uri, b"A" * 1000)
    target = Path(storage.cache_path(uri, str(cache)))
    target.parent.mkdir(parents=True)
    target.write_bytes(b"A" * 300)  # a download cut short (an earlier version trusted it)
    assert Path(storage.local_copy(uri, str(cache))).read_bytes() == b"A" * 1000

    target.write_bytes(b"B" * 1000)  # same size, other bytes
    assert Path(storage.local_copy(uri, str(cache))).read_bytes() == b"A" * 1000
    storage.write_bytes(uri, b"C" * 1000)  # the object changed: another ETag
    storage._VERIFIED.clear()  # a new process
    assert Path(storage.local_copy(uri, str(cache))).read_bytes() == b"C" * 1000
    leftovers = [p.name for p in target.parent.iterdir() if p.name != target.name]
    assert leftovers == []  # no temporary file beside it


# ------------------------------------------------------------------------------------------------
# 5. servers started by tests die with the test process, even when it is killed
_INNER = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.servers import start_server

SERVER = ("import os, subprocess, sys, time\\n"
          "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\\n"
          "open(sys.argv[1] + '.part', 'w').write(f'{{os.getppid()}} {{os.getpid()}} {{child.pid}}')\\n"
          "os.replace(sys.argv[1] + '.part', sys.argv[1])\\n"
          "child.wait()\\n")


def test_holds_a_server(tmp_path):
    start_server([sys.executable, "-c", SERVER, {pids!r}], tmp_path / "server.log")
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_server_dies_with_a_killed_pytest(tmp_path, sig):
    pids = tmp_path / "pids"
    inner = tmp_path / "test_inner.py"
    inner.write_text(textwrap.dedent(_INNER.format(root=str(ROOT), pids=str(pids))))
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(inner)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not pids.exists() and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.05)
        assert pids.exists(), "the inner test never started its server"
        started = [int(p) for p in pids.read_text().split()]  # guard, server, its child
        assert all(_alive(p) for p in started)
        run.send_signal(sig)
        run.wait(30)
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p for p in started if _alive(p)] == []
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
