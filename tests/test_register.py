"""Registry and serving against a REAL ``mlflow server`` (SQLite backend, artifacts proxied to a
moto S3 endpoint over HTTP): promotion rules, refusal, a concurrent pair of client processes, the
champion loaded in a fresh process, REST serving and the ``refseg predict`` CLI.

Budget: under 4 minutes on the 2-core CPU (the server and subprocess imports dominate)."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from components.registry.promotion import VersionInfo, decide
from tests.servers import start_server, stop_server, wait_http

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
MLFLOW = str(Path(PY).with_name("mlflow"))
BUCKET = "refseg-registry"
ZH = "左边的红色方块"
EN = "the blue circle on the right"


# ------------------------------------------------------------------------------------------------
# The promotion fold, as a pure function (no server)
def _v(version, gate, margin=0.0, floor=0.3, eligible=True, metric="gate_overall_iou_crf"):
    return VersionInfo(version, metric, gate, margin, floor, eligible, "" if eligible else "nan",
                       {metric: gate})


def test_decide_fold_rules():
    champ, dec = decide([_v(1, 0.2), _v(2, 0.35), _v(3, 0.34), _v(4, 0.5, margin=0.2),
                         _v(5, 0.9, eligible=False), _v(6, 0.36)])
    assert champ == 6
    assert dec[1][0] == "challenger" and "floor" in dec[1][1]
    assert dec[2][0] == "promoted" and "first model" in dec[2][1]
    assert dec[3][0] == "challenger" and "v2" in dec[3][1]
    assert dec[4][0] == "challenger" and "margin 0.2000" in dec[4][1]
    assert dec[5] == ("challenger", "nan")
    assert dec[6][0] == "promoted"
    # order of arrival, not of listing, decides; ties keep the older champion
    assert decide([_v(2, 0.5), _v(1, 0.5)])[0] == 1
    assert decide([])[0] is None


# ------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




@pytest.fixture(scope="module")
def mlflow_server(s3_endpoint, tmp_path_factory):
    """``mlflow server`` on a free port: SQLite backend, artifacts in s3://refseg-registry."""
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=BUCKET)
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = tmp / "server.log"
    cmd = [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
           "--artifacts-destination", f"s3://{BUCKET}/mlartifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # no background job runner (huey workers): nothing here uses server-side jobs
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = start_server(cmd, log, env=env, cwd=tmp)  # dies with pytest, however it ends
    uri = f"http://127.0.0.1:{port}"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        wait_http(f"{uri}/health", proc, 90, log)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        yield uri
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved
        stop_server(proc)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, synth_dataset):
    """A tiny untrained network + a real tokenizer folder: (checkpoint path, tokenizer dir)."""
    from model import build_model, load_config, save_checkpoint

    tmp = tmp_path_factory.mktemp("tiny-model")
    tok_dir = _tokenizer_dir(tmp, synth_dataset)
    vocab = json.loads((tok_dir / "vocab_zh.json").read_text(encoding="utf-8"))
    cfg = load_config("small", dict(input_size=64, backbone_widths=[8, 8, 16, 16], c_v=16,
                                    c_l=16, c_m=16, embed_dim=16, convlstm_hidden=8,
                                    le_reduction=4, mutan_rank=2, seed=3))
    net = build_model(cfg, len(vocab))
    ckpt = tmp / "best.pt"
    save_checkpoint(str(ckpt), net, cfg, {"lang": "zh", "vocab": "vocab_zh.json",
                                          "data_fingerprint": "fp-test-123", "step": 1,
                                          "val_overall_iou": 0.0})
    return ckpt, tok_dir


def _tokenizer_dir(tmp: Path, synth_dataset: Path) -> Path:
    """The tokenize step on the synthetic set, then the folder the train step copies."""
    import shutil

    from components.tokenize import tokenize

    data = tmp / "data"
    tokenize(str(Path(synth_dataset) / "manifest.parquet"), str(data), seed=0)
    out = tmp / "tokenizer"
    out.mkdir()
    for f in data.iterdir():
        if f.is_file() and (f.name in ("vocab_zh.json", "tokenizer.json")
                            or f.suffix == ".txt"):
            shutil.copy(f, out / f.name)
    return out


def _make_run(uri: str, tiny_model, metrics: dict[str, float], lang: str = "zh",
              tags: dict[str, str] | None = None) -> str:
    import mlflow

    ckpt, tok_dir = tiny_model
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bilingual-refseg")
    with mlflow.start_run() as run:
        mlflow.log_params({"lang": lang, "data_fingerprint": "fp-test-123", "config": "small"})
        mlflow.log_artifact(str(ckpt), artifact_path="checkpoints")
        mlflow.log_artifacts(str(tok_dir), artifact_path="tokenizer")
        mlflow.log_metrics(metrics)
        if tags:
            mlflow.set_tags(tags)
    return run.info.run_id


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri, uri)


def _png(h: int = 75, w: int = 101) -> bytes:
    from PIL import Image

    img = np.full((h, w, 3), 30, dtype=np.uint8)
    img[10:40, 5:35] = (220, 30, 30)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - 50) ** 2 + (xx - 75) ** 2 < 15 ** 2] = (30, 30, 220)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(h: int, w: int, orientation: int = 1) -> bytes:
    from PIL import Image

    yy, xx = np.mgrid[:h, :w]
    img = np.stack([yy * 255 // h, xx * 255 // w, np.full_like(yy, 90)], -1).astype(np.uint8)
    img[h // 4: h // 2, w // 6: w // 3] = (230, 20, 20)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=92, exif=exif)
    return buf.getvalue()


def test_predictor_jpeg_draft_and_exif_orientation(tiny_model):
    """Large JPEGs are decoded at reduced DCT scale; the mask still has the full, EXIF-rotated
    size and matches the full-resolution decode."""
    import pandas as pd

    from components.codec import decode_png as decode_mask_png
    from components.serving.predictor import RefSegPredictor
    from components.serving.requests import InputError, decode_image, decode_image_for

    ckpt, tok = tiny_model
    pred = RefSegPredictor(str(ckpt), str(tok))
    raw = _jpeg(300, 400)
    small, full = decode_image_for(raw, 0, min_side=64)
    assert full == (300, 400) and small.shape == (75, 100, 3)  # 1/4 scale, both sides >= 64
    toks = [pred.tokens(ZH, "zh", 0)]
    p_small = pred.probabilities(small, toks, full)[0]
    p_full = pred.probabilities(decode_image(raw), toks)[0]
    assert p_small.shape == p_full.shape == (300, 400)
    assert float(np.abs(p_small - p_full).mean()) < 0.02
    rotated = _jpeg(240, 320, orientation=6)  # stored landscape, shown portrait
    assert decode_image(rotated).shape == (320, 240, 3)
    out = pred.predict_frame(pd.DataFrame({"image": [rotated, raw], "text": [ZH, EN]}))
    assert decode_mask_png(out["mask_png"][0]).shape == (320, 240)
    assert json.loads(out["mask_rle"][1])["size"] == [300, 400]
    assert list(out["lang"]) == ["zh", "en"]
    with pytest.raises(InputError, match="row 1: text is empty"):
        pred.predict_frame(pd.DataFrame({"image": [raw, raw], "text": [ZH, "  "]}))
    with pytest.raises(InputError, match="row 0: image is a string but not valid base64"):
        pred.predict_frame(pd.DataFrame({"image": ["%%%"], "text": [ZH]}))


# Serving imports only the network, the tokenizer and the mask codec.
_NOT_SERVING = ("great_expectations", "kfp", "components.train", "components.training",
                "components.refer", "components.import_refer", "components.checks",
                "components.check_translations", "components.tokenize", "components.evaluate",
                "components.evaluation", "components.register", "components.registry")

_FRESH = r"""
import json, sys
import mlflow, pandas as pd
m = mlflow.pyfunc.load_model(sys.argv[1])
df = pd.DataFrame({"image": [open(sys.argv[2], "rb").read()], "text": [sys.argv[3]]})
out = m.predict(df)
try:  # the pixel limit set when loading (the model is logged with the key)
    mlflow.pyfunc.load_model(sys.argv[1], model_config={"max_pixels": 100}).predict(df)
    refused = ""
except Exception as exc:
    refused = str(exc)
print("RESULT " + json.dumps({"rows": len(out), "cols": list(out.columns), "modules": sorted(sys.modules),
      "code": sys.modules["components.serving.pyfunc"].__file__, "refused": refused}))
"""


def test_saved_pyfunc_imports_only_serving(tiny_model, tmp_path):
    """A saved pyfunc loads and predicts in a fresh interpreter without importing the checks,
    the trainer, the refer importer or the tokenize step, and ships none of their files."""
    from components.serving.pyfunc import save_pyfunc_model

    ckpt, tok = tiny_model
    path = save_pyfunc_model(str(tmp_path / "pyfunc"), str(ckpt), str(tok), "zh",
                             str(tmp_path / "work"))
    img = tmp_path / "scene.png"
    img.write_bytes(_png(40, 50))
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    res = subprocess.run([PY, "-c", _FRESH, path, str(img), ZH], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.split("RESULT ", 1)[1])
    assert out["rows"] == 1 and out["cols"] == ["mask_png", "mask_rle", "score", "lang", "warning",
                                                "words", "known_words"]
    assert out["code"].startswith(os.path.join(path, "code", "components"))
    assert out["refused"] == ("row 0: image of 50x40 (2,000 pixels) is over the limit of 100 "
                              "pixels (set by the model config's max_pixels or REFSEG_MAX_PIXELS)")
    assert [m for m in out["modules"] if _not_serving(m)] == []
    code = Path(path, "code", "components")
    shipped = sorted(f.relative_to(code).as_posix() for f in code.rglob("*") if f.is_file())
    assert "data/userdict_zh.txt" in shipped and "text/tokenizer.py" in shipped
    as_modules = ["components." + f.removesuffix(".py").replace("/", ".") for f in shipped]
    assert [m for m in as_modules if _not_serving(m)] == []


def _not_serving(module: str) -> bool:
    return any(module == n or module.startswith(n + ".") for n in _NOT_SERVING)


# ------------------------------------------------------------------------------------------------
def test_promotion_sequence(mlflow_server, tiny_model):
    from components.register import register

    name = "refseg-seq"
    r1 = register(_make_run(mlflow_server, tiny_model, {"gate_overall_iou_crf": 0.50,
                                                        "gate_overall_iou": 0.48}),
                  name=name, pipeline_run="kfp-run-42")
    assert (r1["version"], r1["champion"], r1["status"]) == (1, True, "promoted")
    run2 = _make_run(mlflow_server, tiny_model, {"gate_overall_iou_crf": 0.60})
    r2 = register(run2, name=name)
    assert (r2["version"], r2["champion"], r2["champion_version"]) == (2, True, 2)
    r3 = register(_make_run(mlflow_server, tiny_model, {"gate_overall_iou_crf": 0.55}), name=name)
    assert (r3["version"], r3["champion"], r3["status"]) == (3, False, "challenger")

    c = _client(mlflow_server)
    assert c.get_model_version_by_alias(name, "champion").version == "2"
    assert c.get_registered_model(name).aliases == {"champion": "2"}
    t3 = c.get_model_version(name, "3").tags
    assert t3["challenger"] == "true"
    assert t3["reason"] == ("gate_overall_iou_crf 0.5500 does not beat champion v2's "
                            "gate_overall_iou_crf 0.6000 by more than margin 0.0000")
    t1 = c.get_model_version(name, "1").tags
    assert t1["dataset_fingerprint"] == "fp-test-123"
    assert t1["pipeline_run_id"] == "kfp-run-42"
    assert len(t1["git_commit"]) in (0, 40)
    assert float(t1["metric.gate_overall_iou"]) == pytest.approx(0.48)
    assert float(t1["refseg.gate_value"]) == pytest.approx(0.50)
    # the model was logged into the training run and the version points at it
    mv2 = c.get_model_version(name, "2")
    assert mv2.run_id == run2 and mv2.source.startswith("models:/")
    info = c.get_run(run2).info  # reopening the run to attach the model kept its status
    assert info.status == "FINISHED" and info.end_time is not None
    assert c.get_run(run2).data.tags["refseg.registry.version"] == f"{name}/2"
    # rerunning the step for the same run reuses its version
    again = register(run2, name=name)
    assert (again["version"], again["champion"]) == (2, True)
    assert len(c.search_model_versions(f"name = '{name}'")) == 3
    # a margin keeps the champion against a small improvement
    r4 = register(_make_run(mlflow_server, tiny_model, {"gate_overall_iou_crf": 0.62}), name=name,
                  margin=0.05)
    assert (r4["champion"], r4["champion_version"]) == (False, 2)
    assert "margin 0.0500" in r4["reason"]


def test_nan_refused_and_nan_other_metric(mlflow_server, tiny_model):
    from components.register import register

    name = "refseg-nan"
    run = _make_run(mlflow_server, tiny_model, {"gate_overall_iou_crf": float("nan")})
    r = register(run, name=name)
    assert (r["status"], r["version"], r["champion"]) == ("refused", None, False)
    assert "nan" in r["reason"]
    c = _client(mlflow_server)
    assert c.get_run(run).data.tags["refseg.registry.status"] == "refused"
    assert c.search_model_versions(f"name = '{name}'") == []
    from pipelines.cli import main

    assert main(["register", "--run", run, "--name", name]) == 3  # the CLI says refused
    # gate fine but another metric NaN: registered, never champion
    r2 = register(_make_run(mlflow_server, tiny_model, {"gate_overall_iou_crf": 0.9,
                                                        "val_prec_90": float("nan")}), name=name)
    assert (r2["version"], r2["champion"], r2["status"]) == (1, False, "challenger")
    assert r2["reason"] == "metric(s) not finite: val_prec_90"
    assert c.get_registered_model(name).aliases == {}
    # missing gate metric is a usage error naming the run
    bare = _make_run(mlflow_server, tiny_model, {"train_loss": 0.3})
    with pytest.raises(ValueError, match=f"run {bare} has no metric 'gate_overall_iou_crf'"):
        register(bare, name=name)


def test_first_model_floor_and_crf_fallback(mlflow_server, tiny_model):
    from components.register import register

    name = "refseg-floor"
    r1 = register(_make_run(mlflow_server, tiny_model, {"gate_overall_iou_crf": 0.2}), name=name)
    assert (r1["champion"], r1["status"]) == (False, "challenger")
    assert "< floor 0.3000" in r1["reason"]
    # CRF off: the gate falls back to gate_overall_iou
    r2 = register(_make_run(mlflow_server, tiny_model, {"gate_overall_iou": 0.31}), name=name)
    assert (r2["gate_metric"], r2["champion"], r2["version"]) == ("gate_overall_iou", True, 2)


def test_old_champion_compared_on_its_own_gate_metric():
    """A champion registered before the gate split (gated on val_overall_iou_crf, no gate_*
    metric) is compared on its own gate value; a newer one on the same metric."""
    old = VersionInfo(1, "val_overall_iou_crf", 0.50, 0.0, 0.3, True, "",
                      {"val_overall_iou_crf": 0.50, "val_overall_iou": 0.45})
    champ, dec = decide([old, _v(2, 0.49), _v(3, 0.52)])
    assert champ == 3
    assert dec[2] == ("challenger", "gate_overall_iou_crf 0.4900 does not beat champion v1's "
                      "val_overall_iou_crf 0.5000 by more than margin 0.0000")
    assert dec[3][1].startswith("gate_overall_iou_crf 0.5200 beats champion v1's "
                                "val_overall_iou_crf 0.5000")


def test_gate_split_of_a_metric():
    from components.registry.promotion import gate_split_of

    tags = {"refseg.gate_split": "testA+testB"}
    assert gate_split_of("gate_overall_iou_crf", tags) == "testA+testB"
    assert gate_split_of("gate_overall_iou", {}) == ""
    assert gate_split_of("val_overall_iou_crf", tags) == "val"
    assert gate_split_of("testB_prec_50", tags) == "testB"


def test_version_says_which_split_gated_and_which_selected(mlflow_server, tiny_model):
    """The evaluate step's run tags reach the version; an old champion (gated on val) is
    compared on its own metric by a challenger gated on the pooled test splits."""
    from components.register import register

    name = "refseg-gate-split"
    old = register(_make_run(mlflow_server, tiny_model, {"val_overall_iou_crf": 0.50}),
                   name=name, gate_metric="val_overall_iou_crf")
    assert old["champion"] and old["gate_metric"] == "val_overall_iou_crf"
    tags = {"refseg.gate_split": "testA+testB", "refseg.select_split": "val"}
    new = register(_make_run(mlflow_server, tiny_model, {"gate_overall_iou_crf": 0.55,
                                                         "val_overall_iou_crf": 0.40},
                             tags=tags), name=name)
    assert (new["version"], new["champion"], new["gate_metric"]) == (2, True,
                                                                     "gate_overall_iou_crf")
    c = _client(mlflow_server)
    t1, t2 = (c.get_model_version(name, v).tags for v in ("1", "2"))
    assert t1["refseg.gate_split"] == "val"  # gated on the val metric
    assert t1["refseg.select_split"] == ""  # the tiny checkpoint does not say
    assert t2["refseg.gate_split"] == "testA+testB" and t2["refseg.select_split"] == "val"
    # compared with the champion's own gate metric (it has no gate_* metric)
    assert t2["reason"] == ("gate_overall_iou_crf 0.5500 beats champion v1's "
                            "val_overall_iou_crf 0.5000 by more than margin 0.0000")


def test_register_help_names_the_gate_split(capsys):
    from pipelines.cli import main

    with pytest.raises(SystemExit):
        main(["register", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "gate_overall_iou_crf" in out and "refseg.gate_split" in out
    assert "refseg.select_split" in out


_RACER = r"""
import json, os, sys, time
from pathlib import Path
from components.register import register
Path(sys.argv[3]).write_text("ready")
while not Path(sys.argv[4]).exists():
    time.sleep(0.01)
print("RESULT " + json.dumps(register(sys.argv[1], name=sys.argv[2]), default=str), flush=True)
"""


def test_concurrent_pair_leaves_one_champion_the_better(mlflow_server, tiny_model, tmp_path):
    from components.register import register

    name = "refseg-race"
    base = register(_make_run(mlflow_server, tiny_model, {"gate_overall_iou_crf": 0.40}),
                    name=name)
    assert base["champion"]
    good = _make_run(mlflow_server, tiny_model, {"gate_overall_iou_crf": 0.70})
    fair = _make_run(mlflow_server, tiny_model, {"gate_overall_iou_crf": 0.55})
    go = tmp_path / "go"
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_server, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([PY, "-c", _RACER, rid, name, str(tmp_path / f"ready{i}"), str(go)],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for i, rid in enumerate((fair, good))]
    deadline = time.time() + 90
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate()[0][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.05)
    go.write_text("go")
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-3000:] for o in outs]
    res = [json.loads(o.split("RESULT ", 1)[1]) for o in outs]
    assert sorted(r["version"] for r in res) == [2, 3]
    c = _client(mlflow_server)
    good_version = str(res[1]["version"])
    assert c.get_registered_model(name).aliases == {"champion": good_version}
    fair_tags = c.get_model_version(name, str(res[0]["version"])).tags
    if res[0]["version"] > res[1]["version"]:  # fair arrived second: a challenger
        assert fair_tags["challenger"] == "true"
    else:  # fair arrived first: promoted over v1, then superseded by the good one
        assert fair_tags["refseg.status"] == "promoted"


_STRESS = r"""
import sys, time
from pathlib import Path
from mlflow import MlflowClient
from components.registry import promotion as P, store
uri, name, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = MlflowClient(uri, uri)
store.ensure_registered_model(c, name, "zh")
Path(sys.argv[4]).write_text("ready")
while not Path(sys.argv[5]).exists():
    time.sleep(0.005)
for k, g in enumerate(sys.argv[6:]):
    tags = {P.T_RUN: f"s{seed}-{k}", P.T_GATE_METRIC: "m", P.T_GATE_VALUE: g, P.T_MARGIN: "0.0",
            P.T_FLOOR: "0.3", P.T_ELIGIBLE: "true"}
    c.create_model_version(name, source="s3://nowhere/model", tags=tags)
    store.converge(c, name)
"""


def test_compare_and_set_under_three_writers(mlflow_server, tmp_path):
    """Registry-only stress: 3 processes x 3 versions with rising gates, interleaved."""
    from components.registry.store import current_champion, versions

    name = "refseg-stress"
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    gates = [["0.41", "0.62", "0.83"], ["0.42", "0.61", "0.82"], ["0.43", "0.63", "0.81"]]
    procs = [subprocess.Popen([PY, "-c", _STRESS, mlflow_server, name, str(i),
                               str(tmp_path / f"r{i}"), str(go), *g], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i, g in enumerate(gates)]
    deadline = time.time() + 90
    while not all((tmp_path / f"r{i}").exists() for i in range(3)):
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    go.write_text("go")
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-2000:] for o in outs]
    c = _client(mlflow_server)
    infos = [VersionInfo.from_tags(v, t) for v, t in versions(c, name)]
    assert len(infos) == 9
    expected, _ = decide(infos)
    assert current_champion(c, name) == expected
    # margin 0: the fold is a running maximum, so the champion is the best version (0.83)
    assert expected == max(infos, key=lambda i: i.gate_value).version
    assert [i.gate_value for i in infos if i.version == expected] == [0.83]


# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zh_champion(mlflow_server, tiny_model):
    from components.register import register

    r = register(_make_run(mlflow_server, tiny_model, {"gate_overall_iou_crf": 0.45}))
    assert r["name"] == "bilingual-refseg-zh" and r["champion"]
    return "models:/bilingual-refseg-zh@champion"


_LOAD = r"""
import base64, io, json, sys
import mlflow, pandas as pd
from PIL import Image
m = mlflow.pyfunc.load_model(sys.argv[1])
import components.serving.pyfunc as pm
png = open(sys.argv[2], "rb").read()
df = pd.DataFrame({"image": [png, base64.b64encode(png).decode()], "text": [sys.argv[3], sys.argv[4]]})
out = m.predict(df)
shapes = [list(Image.open(io.BytesIO(base64.b64decode(s))).size[::-1]) for s in out["mask_png"]]
rles = [json.loads(r)["size"] for r in out["mask_rle"]]
print("RESULT " + json.dumps({"shapes": shapes, "rles": rles, "lang": list(out["lang"]),
      "score": [float(s) for s in out["score"]], "warning": list(out["warning"]),
      "code": pm.__file__, "cols": list(out.columns)}))
"""


def test_champion_loads_in_fresh_process(mlflow_server, zh_champion, tmp_path):
    img = tmp_path / "scene.png"
    img.write_bytes(_png(75, 101))
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_server)
    env.pop("PYTHONPATH", None)
    res = subprocess.run([PY, "-c", _LOAD, zh_champion, str(img), ZH, EN], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.split("RESULT ", 1)[1])
    assert out["shapes"] == [[75, 101], [75, 101]]
    assert out["rles"] == [[75, 101], [75, 101]]
    assert out["lang"] == ["zh", "en"]
    assert out["warning"][0] == "" and "bilingual-refseg-en" in out["warning"][1]
    assert all(0.0 <= s <= 1.0 for s in out["score"])
    assert out["cols"] == ["mask_png", "mask_rle", "score", "lang", "warning", "words",
                           "known_words"]
    # the code came from the model's own code/ folder, not from this checkout
    assert f"{os.sep}code{os.sep}components{os.sep}serving{os.sep}pyfunc.py" in out["code"]


def test_rest_serving(mlflow_server, zh_champion, tmp_path):
    port = _free_port()
    log = tmp_path / "serve.log"
    # the scoring server is started as `uvicorn ...` through PATH: the venv's bin must be on it
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_server,
               PATH=os.pathsep.join([str(Path(PY).parent), os.environ.get("PATH", "")]))
    proc = start_server([MLFLOW, "models", "serve", "-m", zh_champion, "--env-manager", "local",
                         "-h", "127.0.0.1", "-p", str(port)], log, env=env, cwd=tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, 150, log)
        body = {"dataframe_split": {"columns": ["image", "text", "lang"],
                                    "data": [[base64.b64encode(_png(60, 90)).decode(), ZH, "zh"]]},
                "params": {"threshold": 0.5}}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            preds = json.loads(r.read())["predictions"]
        assert len(preds) == 1 and preds[0]["lang"] == "zh"
        from components.codec import decode_png as decode_mask_png
        from components.data.manifest import decode_mask

        mask = decode_mask_png(preds[0]["mask_png"])
        assert mask.shape == (60, 90) and set(np.unique(mask)) <= {0, 1}
        assert np.array_equal(decode_mask(json.loads(preds[0]["mask_rle"])), mask)
        # a bad row is refused with a message naming it
        bad = {"dataframe_split": {"columns": ["image", "text"], "data": [["bm90IGFuIGltYWdl",
                                                                           ZH]]}}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                     data=json.dumps(bad).encode(),
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=60)
        assert "row 0: image cannot be decoded" in err.value.read().decode()
    finally:
        stop_server(proc)


def test_predict_cli(mlflow_server, zh_champion, tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # loading a pyfunc prepends its code/
    from PIL import Image

    from pipelines.cli import main

    img = tmp_path / "scene.png"
    img.write_bytes(_png(75, 101))
    out = tmp_path / "pred" / "mask.png"
    rc = main(["predict", "--model", zh_champion, "--image", str(img), "--text", ZH,
               "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "lang: zh" in printed and "score: " in printed
    mask = np.asarray(Image.open(out))
    assert mask.shape == (75, 101) and set(np.unique(mask)) <= {0, 255}
    overlay = np.asarray(Image.open(tmp_path / "pred" / "mask.overlay.png"))
    assert overlay.shape == (75, 101, 3)
    # a local checkpoint + tokenizer folder gives the same mask without MLflow
    ckpt, tok = tiny_model
    out2 = tmp_path / "local.png"
    assert main(["predict", "--model", str(ckpt), "--tokenizer", str(tok), "--image", str(img),
                 "--text", ZH, "--lang", "zh", "--out", str(out2)]) == 0
    assert np.array_equal(np.asarray(Image.open(out2)), mask)
    assert main(["predict", "--model", str(ckpt), "--image", str(img), "--text", ZH,
                 "--out", str(out2)]) == 1
    assert "pass --tokenizer" in capsys.readouterr().err
