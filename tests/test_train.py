"""The train step (components/train.py) on the synthetic set after the real tokenize step, with a
tiny network (small preset, narrowed by overrides) on CPU: it learns; SIGKILL and SIGTERM runs
resume to bit-identical weights; a 2-process gloo DDP run matches the single-process run on the
same global batch; MLflow (SQLite in tmp_path) holds params, metric history and artifacts; a NaN
loss stops with a clear message. Budget (with tests/test_refdata.py): about 150 s
on 2 cores."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from components.train import train
from components.training.config import load_run_config
from components.training.state import load_resume
from components.training.trainer import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]
# small preset narrowed for tests; the embedding size comes from tokenize (16-d below)
TINY = dict(input_size=64, backbone_widths=[8, 8, 16, 16], c_v=16, c_l=16, c_m=16,
            convlstm_hidden=8, mutan_rank=2, le_reduction=4, batch_images=4, num_workers=0,
            log_every=1, warmup_steps=0)
# the small preset at 64 px, single level (Res3, no CLAF/ConvLSTM: the fastest to learn on a CPU,
# see docs/training.md), 4 images a step: learns within a minute. The fault and DDP tests use
# the three-level small3 (CLAF + ConvLSTM), whose slower steps leave time to send a signal.
LEARN = dict(input_size=64, levels=["res3"], use_claf=False, lr=3e-3, warmup_steps=50,
             batch_images=4, num_workers=0, log_every=1)
LEARN_STEPS = 1500




@pytest.fixture()
def sqlite_uri(tmp_path):
    return f"sqlite:///{tmp_path}/mlflow.db"


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _baselines(data_dir: Path, lang: str, size: int) -> tuple[float, float]:
    """Overall IoU of the empty prediction (0) and of predicting the whole image."""
    from components.data.refdata import RefDataset

    ds = RefDataset(str(data_dir), lang, "val", size)
    fg = sum(float(ds[i]["masks"].sum()) for i in range(len(ds)))
    return 0.0, fg / (ds.num_expressions * size * size)


class _Lines(logging.Handler):
    """The messages of a logger, kept while the test runs (at INFO whatever the process set)."""

    def __init__(self, name: str):
        super().__init__(logging.INFO)
        self.logger, self.lines = logging.getLogger(name), []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self):
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)


def _cli(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "train", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _sets(d: dict) -> list[str]:
    out = []
    for k, v in d.items():
        out += ["--set", f"{k}={json.dumps(v)}"]
    return out


def _wait_for_resume(path: Path, proc: subprocess.Popen, min_step: int, timeout: float = 120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.communicate()}")
        if path.exists():
            try:
                if int(load_resume(str(path))["step"]) >= min_step:
                    return
            except (ValueError, RuntimeError, EOFError):
                pass  # being replaced right now
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"no {path} at step >= {min_step} within {timeout} s")


# ------------------------------------------------------------------------------------------------
def test_learns_and_tracks_in_mlflow(tmp_path_factory, tmp_path, sqlite_uri):
    """The small preset (single level, as measured in docs/training.md) learns well above the
    empty and whole-image baselines on a 300-image synthetic set; the run folder follows the
    contract (tokenizer folder loadable for inference); MLflow holds params, the loss history and
    the artifacts."""
    import mlflow

    from components.synth import generate
    from components.tokenize import tokenize

    src = tmp_path_factory.mktemp("synth300")
    generate(str(src), n_images=300, seed=11)
    data_dir = tmp_path_factory.mktemp("tok300")
    tokenize(str(src / "manifest.parquet"), str(data_dir), zh_dim=16, en_dim=16, w2v_epochs=2)
    out = tmp_path / "run"
    steps = LEARN_STEPS
    with _Lines("refseg.train.en") as progress:
        s = train(str(data_dir), "en", "small", str(out), steps=steps, seed=0,
                  overrides=dict(LEARN, val_every=steps // 2), tracking_uri=sqlite_uri)
    empty, whole = _baselines(data_dir, "en", 64)
    best = s["best_val_overall_iou"]
    ious = [h["val_overall_iou"] for h in s["history"]]
    assert len(ious) == 2 and best == max(ious)
    assert best > max(0.15, 3 * whole, empty + 0.15), (best, whole, ious)
    printed = "\n".join(progress.lines)
    assert printed.count("val_overall_iou") == 2  # one progress line per validation
    for f in ("checkpoints/best.pt", "checkpoints/last.pt", "resume.pt", "summary.json",
              "run_id.txt", "tokenizer/vocab_en.json", "tokenizer/tokenizer.json"):
        assert (out / f).is_file(), f
    from model import load_checkpoint

    _, cfg, extra = load_checkpoint(str(out / "checkpoints" / "best.pt"))
    assert cfg.input_size == 64 and cfg.levels == ["res3"] and cfg.embed_dim == 16
    assert extra["lang"] == "en" and extra["vocab"] == "vocab_en.json"
    assert extra["val_overall_iou"] == pytest.approx(best)
    assert extra["data_fingerprint"] == s["data_fingerprint"] and len(s["data_fingerprint"]) == 64
    run_id = (out / "run_id.txt").read_text().strip()
    assert run_id == s["run_id"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run_id"] == run_id and summary["steps"] == steps
    assert summary["best_val_overall_iou"] == pytest.approx(best)
    assert summary["timings"]["total_s"] >= summary["timings"]["train_steps_s"] > 0
    # OUT/tokenizer is a one-language tokenizer folder that inference loads as it is
    from components.text.tokenizer import load_tokenizer

    tok = load_tokenizer(str(out / "tokenizer"))
    assert tok.langs == ("en",)
    assert json.loads((out / "tokenizer" / "tokenizer.json").read_text())["langs"] == ["en"]
    assert (out / "tokenizer" / "userdict_zh.txt").is_file()
    ids, n = tok.encode("the red circle", "en")
    ref_ids, ref_n = load_tokenizer(str(data_dir)).encode("the red circle", "en")
    assert (ids, n) == (ref_ids, ref_n) and n == 3 and 1 not in ids[:n]
    assert load_tokenizer(str(out / "tokenizer"), "en").encode("the red circle", "en") == (ids, n)

    client = mlflow.MlflowClient(tracking_uri=sqlite_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "bilingual-refseg"
    p = run.data.params
    assert p["lang"] == "en" and p["seed"] == "0" and p["world_size"] == "1"
    assert p["train.lr"] == "0.003" and p["model.c_m"] == "64" and p["model.input_size"] == "64"
    assert p["data_fingerprint"] == s["data_fingerprint"]
    assert p["git_commit"] == "unknown" or len(p["git_commit"]) == 40
    assert run.data.tags["device_type"] == "cpu"
    loss = client.get_metric_history(run_id, "loss")
    assert [m.step for m in sorted(loss, key=lambda m: m.step)] == list(range(1, steps + 1))
    assert np.mean([m.value for m in loss if m.step > steps - 50]) < np.mean(
        [m.value for m in loss if m.step <= 50])
    assert len(client.get_metric_history(run_id, "lr")) == steps
    assert client.get_metric_history(run_id, "throughput_expr_per_s")[0].value > 0
    val = client.get_metric_history(run_id, "val_overall_iou")
    assert [m.step for m in sorted(val, key=lambda m: m.step)] == [steps // 2, steps]
    for k in ("val_mean_iou", "val_prec_50", "val_prec_90"):
        assert k in run.data.metrics
    arts = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert "checkpoints/best.pt" in arts
    toks = {a.path for a in client.list_artifacts(run_id, "tokenizer")}
    assert "tokenizer/vocab_en.json" in toks


# ------------------------------------------------------------------------------------------------
RESUME_CFG = dict(TINY, resume_every=2, val_every=4, lr=2e-3)
RESUME_STEPS = 16


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """An uninterrupted deterministic run (in this process)."""
    out = tmp_path_factory.mktemp("ref")
    uri = f"sqlite:///{out}/mlflow.db"
    train(str(data_dir), "zh", "small3", str(out / "run"), steps=RESUME_STEPS, seed=1,
          overrides=RESUME_CFG, tracking_uri=uri, quiet=True, deterministic=True)
    return out / "run"


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_interrupted_run_resumes_to_identical_weights(sig, data_dir, reference, tmp_path,
                                                      sqlite_uri):
    import mlflow

    out = tmp_path / "run"
    args = ["--data", str(data_dir), "--lang", "zh", "--config", "small3", "--out", str(out),
            "--steps", str(RESUME_STEPS), "--seed", "1", "--deterministic", "--quiet",
            "--tracking-uri", sqlite_uri, *_sets(RESUME_CFG)]
    # the same thread count as the in-process reference: float sums depend on it
    proc = _cli(args, {"OMP_NUM_THREADS": str(torch.get_num_threads())})
    _wait_for_resume(out / "resume.pt", proc, min_step=4)
    proc.send_signal(getattr(signal, sig))
    stdout, stderr = proc.communicate(timeout=120)
    st = load_resume(str(out / "resume.pt"))
    assert 4 <= st["step"] < RESUME_STEPS
    if sig == "SIGTERM":
        assert proc.returncode == 143, stderr
        assert "SIGTERM: state saved" in stderr and "Traceback" not in stderr
        assert not (out / "checkpoints" / "last.pt").exists()
        assert json.loads((out / "summary.json").read_text())["interrupted"] is True
    else:
        assert proc.returncode == -signal.SIGKILL
    # the resume file holds everything, loadable with weights_only=True
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "items_in_epoch", "run_id",
            "step"} <= set(st)
    assert isinstance(st["rng"]["torch"], torch.Tensor)
    run_id = st["run_id"]
    # restart: same OUT -> same MLflow run, continues from resume.pt
    s = train(str(data_dir), "zh", "small3", str(out), steps=RESUME_STEPS, seed=1,
              overrides=RESUME_CFG, tracking_uri=sqlite_uri, quiet=True, deterministic=True)
    assert s["run_id"] == run_id and s["steps"] == RESUME_STEPS and not s["interrupted"]
    a, b = _state(reference / "checkpoints" / "last.pt"), _state(out / "checkpoints" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    client = mlflow.MlflowClient(tracking_uri=sqlite_uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    if sig == "SIGTERM":  # the Chinese tokenizer folder (with the jieba user dictionary) loads
        from components.text.tokenizer import load_tokenizer

        tok = load_tokenizer(str(out / "tokenizer"))
        assert tok.langs == ("zh",) and tok.userdict.endswith("userdict_zh.txt")
        text = "左边的红色圆形"
        assert tok.encode(text, "zh") == load_tokenizer(str(data_dir)).encode(text, "zh")
    steps = {m.step for m in client.get_metric_history(run_id, "loss")}
    assert steps == set(range(1, RESUME_STEPS + 1))


# ------------------------------------------------------------------------------------------------
def test_ddp_two_processes_match_single_process(data_dir, tmp_path):
    """torchrun, 2 gloo processes with 2 images each == 1 process with 4 images per step."""
    cfg = dict(TINY, backbone_frozen=True, val_every=3, resume_every=100, lr=1e-3)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    single = train(str(data_dir), "en", "small3", str(tmp_path / "one"), steps=3, seed=2,
                   overrides=dict(cfg, batch_images=4), tracking_uri=uri, quiet=True,
                   deterministic=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--standalone", "-m", "pipelines.cli", "train", "--data", str(data_dir),
           "--lang", "en", "--config", "small3", "--out", str(tmp_path / "two"), "--steps", "3",
           "--seed", "2", "--deterministic", "--tracking-uri", uri,
           *_sets(dict(cfg, batch_images=2))]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2 and two["steps"] == 3
    assert r.stderr.count("val_overall_iou") == 1  # only rank 0 logs progress
    a = _state(tmp_path / "one" / "checkpoints" / "last.pt")
    b = _state(tmp_path / "two" / "checkpoints" / "last.pt")
    moved = 0
    init = None
    for k in a:
        if not a[k].is_floating_point():
            continue
        diff = (a[k] - b[k]).abs().max().item()
        assert diff < 2e-4, (k, diff)
        moved += 1
    assert moved > 10 and init is None
    assert two["history"][0]["val_overall_iou"] == pytest.approx(
        single["history"][0]["val_overall_iou"], abs=0.02)


# ------------------------------------------------------------------------------------------------
def test_nan_loss_stops_with_message(data_dir, tmp_path, sqlite_uri):
    import mlflow

    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3 .*no weights"):
        train(str(data_dir), "en", "small3", str(out), steps=10, seed=0,
              overrides=dict(TINY, debug_nan_at_step=3, resume_every=2, val_every=100),
              tracking_uri=sqlite_uri, quiet=True)
    assert not (out / "checkpoints").exists()
    assert load_resume(str(out / "resume.pt"))["step"] == 2  # the last good state
    run_id = (out / "run_id.txt").read_text().strip()
    run = mlflow.MlflowClient(tracking_uri=sqlite_uri).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["failure"] == "non-finite loss"
    # the CLI prints one line and exits 1
    from pipelines.cli import main

    rc = main(["train", "--data", str(data_dir), "--lang", "en", "--out", str(tmp_path / "cli"),
               "--steps", "5", "--quiet", "--tracking-uri", sqlite_uri,
               *_sets(dict(TINY, debug_nan_at_step=1))])
    assert rc == 1


def test_frozen_backbone_without_weights_is_refused(data_dir, tmp_path, sqlite_uri, capsys):
    """The paper preset as shipped (frozen resnet101, no weights) loads but does not train: the
    CLI exits 1 with one line naming both settings and both ways out; either way out passes."""
    from components.training.guards import check_trainable
    from pipelines.cli import main

    paper = load_run_config("paper")[0]  # loading still works (FLOP counts, tests)
    rc = main(["train", "--data", str(data_dir), "--lang", "en", "--out", str(tmp_path / "p"),
               "--config", "paper", "--steps", "1", "--tracking-uri", sqlite_uri])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    for words in ("backbone_frozen: true", "backbone_weights: null", "frozen random resnet101",
                  "--set backbone_weights=", "--set backbone_frozen=false"):
        assert words in err[0]
    assert not (tmp_path / "p" / "checkpoints").exists()
    from components.training.config import parse_sets

    m = load_run_config("paper", parse_sets(["backbone_frozen=false"]))[0]
    assert m.backbone_frozen is False
    check_trainable(m)  # train from scratch: allowed
    check_trainable(paper.replace(backbone_weights="deeplab.pth"))  # weights given: allowed
    check_trainable(load_run_config("small")[0])  # narrow_resnet from scratch: never refused


def test_config_resolution_and_errors(data_dir, tmp_path):
    m, t, _ = load_run_config("small", {"lr": 1e-3, "c_m": 32, "val_every": 7}, seed=5)
    assert (t.lr, t.val_every, m.c_m, m.seed, m.name) == (1e-3, 7, 32, 5, "small")
    m, t, _ = load_run_config("paper")
    assert t.lr == 2.5e-4 and m.input_size == 320 and t.batch_images == 1
    y = tmp_path / "c.yaml"
    y.write_text("base: small\ninput_size: 96\nlr: 0.01\ntrain:\n  steps: 42\n")
    m, t, _ = load_run_config(str(y))
    assert (m.input_size, t.lr, t.steps, t.batch_images) == (96, 0.01, 42, 4)
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        load_run_config("small", {"no_such_key": 1})
    with pytest.raises(ValueError, match="neither a preset"):
        load_run_config("tiny")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        load_run_config("small", steps=0)
    with pytest.raises(FileNotFoundError, match="vocab_fr|no vocabulary|lang|no _COMPLETE.json"):
        train(str(tmp_path), "en", "small", str(tmp_path / "o"), steps=1)


def test_config_files_one_path(tmp_path):
    """Presets and ablation rows are configs/*.yaml with model: and train: sections, read by one
    loader: small3 is small with three levels, CLAF, 2000 steps and hflip; rows apply on any
    preset."""
    import configs

    assert configs.presets() == ["paper", "small", "small3", "small3_os8"]
    assert configs.ablation_names()[0] == "row1_baseline" and len(configs.ablation_names()) == 10
    small, small3 = configs.read("small"), configs.read("small3")
    assert small3["model"] == {**small["model"], "name": "small3",
                               "levels": ["res3", "res4", "res5"], "use_claf": True}
    assert small3["train"] == {**small["train"], "steps": 2000, "hflip": 0.5}
    m, t, _ = load_run_config("small3")
    assert (m.name, m.levels, m.use_claf, t.steps, t.lr, t.batch_images, t.hflip) == (
        "small3", ["res3", "res4", "res5"], True, 2000, 3e-3, 4, 0.5)
    m, t, _ = load_run_config("ablation/row10_full")
    assert (m.name, m.input_size, m.use_mutan, t.steps) == ("paper:row10_full", 320, True, 200_000)
    m, t, _ = load_run_config("small:row1_baseline")
    assert (m.name, m.levels, m.use_mutan, m.input_size, t.steps) == (
        "small:row1_baseline", ["res5"], False, 96, 5000)
    y = tmp_path / "run.yaml"
    y.write_text("base: small3\nmodel:\n  c_m: 24\ntrain:\n  lr: 0.01\n")
    m, t, explicit = load_run_config(str(y), {"steps": 7})
    assert (m.name, m.c_m, m.use_claf, t.lr, t.steps, t.batch_images) == (
        "small3", 24, True, 0.01, 7, 4)
    assert "c_m" in explicit and "embed_dim" not in explicit
    assert "embed_dim" not in load_run_config("small")[2]  # a preset's fields are not the user's
    with pytest.raises(ValueError, match="unknown training keys"):
        y.write_text("base: small\ntrain:\n  no_such: 1\n")
        load_run_config(str(y))
    with pytest.raises(ValueError, match="unknown ablation row"):
        load_run_config("small:row99")


# ------------------------------------------------------------------------------------------------
PAIR = dict(TINY, levels=["res3"], use_claf=False, batching="pair", batch_size=4, lr=3e-3,
            resume_every=100)


def test_pair_batching_learns_and_selects_on_the_named_split(data_dir, tmp_path, sqlite_uri):
    """batching: pair: each step takes batch_size image-expression pairs; the loss is finite and
    goes down; select_split=testA validates on testA, names the metrics after it and records it
    in best.pt's extra and in summary.json."""
    import mlflow

    from model import load_checkpoint

    out = tmp_path / "run"
    steps = 24
    s = train(str(data_dir), "en", "small", str(out), steps=steps, seed=0,
              overrides=dict(PAIR, val_every=12, select_split="testA"), tracking_uri=sqlite_uri)
    assert (s["batching"], s["select_split"], s["steps"]) == ("pair", "testA", steps)
    assert [h["step"] for h in s["history"]] == [12, 24]
    assert all("testA_overall_iou" in h and "val_overall_iou" not in h for h in s["history"])
    st = load_resume(str(out / "resume.pt"))
    assert st["items_in_epoch"] % 4 == 0 and st["config"]["train"]["batching"] == "pair"
    _, _, extra = load_checkpoint(str(out / "checkpoints" / "best.pt"))
    assert extra["select_split"] == "testA"
    # the vocabulary it was trained on, by content (evaluate and predict compare it)
    from components.text.tokenized import TokenizedData
    from components.text.tokenizer import vocab_fingerprint

    fp = vocab_fingerprint(TokenizedData(str(data_dir)).read_vocab("en"))
    assert extra["vocab_fingerprint"] == fp
    assert extra["val_overall_iou"] == pytest.approx(s["best_val_overall_iou"])
    assert json.loads((out / "summary.json").read_text())["select_split"] == "testA"
    client = mlflow.MlflowClient(tracking_uri=sqlite_uri)
    run = client.get_run(s["run_id"])
    assert "testA_overall_iou" in run.data.metrics and "best_testA_overall_iou" in run.data.metrics
    assert "val_overall_iou" not in run.data.metrics
    assert run.data.params["train.batching"] == "pair" and run.data.params["train.batch_size"] == "4"
    assert run.data.params["vocab_fingerprint"] == fp
    loss = [m.value for m in sorted(client.get_metric_history(s["run_id"], "loss"),
                                    key=lambda m: m.step)]
    assert len(loss) == steps and np.isfinite(loss).all()
    assert np.mean(loss[-6:]) < 0.8 * np.mean(loss[:6]), loss


def test_pair_batching_resumes_to_identical_weights(data_dir, tmp_path, monkeypatch):
    """A pair-mode run stopped mid-epoch (the SIGTERM path: stop after a step, resume.pt) and
    run again to the end has the weights of an uninterrupted run."""
    from components.training.trainer import Trainer

    cfg = dict(PAIR, val_every=3)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    kw = dict(steps=7, seed=3, overrides=cfg, tracking_uri=uri, deterministic=True)
    train(str(data_dir), "zh", "small", str(tmp_path / "ref"), **kw)
    step = Trainer.step

    def stop_after_4(self, batch):
        res = step(self, batch)
        self.stop_requested = self.steps_done == 4
        return res

    monkeypatch.setattr(Trainer, "step", stop_after_4)
    s = train(str(data_dir), "zh", "small", str(tmp_path / "cut"), **kw)
    assert s["interrupted"] and s["steps"] == 4
    st = load_resume(str(tmp_path / "cut" / "resume.pt"))
    assert (st["step"], st["epoch"], st["items_in_epoch"]) == (4, 0, 16)  # mid-epoch, 16 pairs
    monkeypatch.setattr(Trainer, "step", step)
    s = train(str(data_dir), "zh", "small", str(tmp_path / "cut"), **kw)
    assert s["steps"] == 7 and not s["interrupted"]
    a = _state(tmp_path / "ref" / "checkpoints" / "last.pt")
    b = _state(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_batching_and_select_split_config(data_dir, tmp_path):
    """paper: pair batching, 1 pair, Adam 2.5e-4; small/small3 keep image batching; val_split
    is the old name of select_split (YAML and --set); mistakes are one-line ConfigErrors."""
    from components.errors import ConfigError
    from components.training.trainer import _config_diff

    m, t, _ = load_run_config("paper")
    assert (t.batching, t.batch_size, t.per_step, t.lr, t.select_split) == (
        "pair", 1, 1, 2.5e-4, "val")
    assert load_run_config("ablation/row1_baseline")[1].batching == "pair"
    for preset in ("small", "small3", "small:row1_baseline"):
        t = load_run_config(preset)[1]
        assert (t.batching, t.per_step, t.select_split) == ("image", 4, "val")
    assert load_run_config("small", {"val_split": "testB"})[1].select_split == "testB"
    assert load_run_config("small", {"select_split": "testA"})[1].val_split == "testA"
    y = tmp_path / "old.yaml"
    y.write_text("base: small\ntrain:\n  val_split: testA\n")
    assert load_run_config(str(y))[1].select_split == "testA"
    assert load_run_config(str(y), {"select_split": "val"})[1].select_split == "val"
    y.write_text("base: small\ntrain:\n  val_split: testA\n  select_split: testB\n")
    with pytest.raises(ConfigError, match="val_split .* old name of select_split"):
        load_run_config(str(y))
    with pytest.raises(ConfigError, match="batching must be one of"):
        load_run_config("small", {"batching": "pairs"})
    with pytest.raises(ConfigError, match="max_expressions_per_image applies to batching: image"):
        load_run_config("paper", {"max_expressions_per_image": 2})
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        load_run_config("paper", {"batch_size": 0})
    with pytest.raises(ConfigError, match="select_split 'testC'"):
        train(str(data_dir), "en", "small", str(tmp_path / "o"), steps=1,
              overrides=dict(TINY, select_split="testC"))
    # a resume file written before these fields existed (val_split, no batching) still matches
    m, t, _ = load_run_config("small")
    resolved = {"model": m.to_dict(), "train": t.to_dict()}
    old = {"model": dict(resolved["model"]), "train": dict(resolved["train"], val_split="val")}
    for k in ("batching", "batch_size", "select_split"):
        del old["train"][k]
    assert _config_diff(old, resolved) == []
    old["train"]["val_split"] = "testA"
    assert _config_diff(old, resolved) == ["train.select_split"]


# ------------------------------------------------------------------------------------------------
# A retried pipeline task: the train step of the DAG (pipelines/steps.py train_op) under kfp.local,
# its state in S3 (moto over HTTP), killed mid-run, run again as a retry in a fresh pod would be.
RETRY_PIPELINE = '''
import sys
from kfp import dsl, local
from pipelines.steps import train_op

data_uri, config, steps, tracking_uri, resume_root, root = sys.argv[1:]

@dsl.pipeline(name="train-retry")
def one_train() -> str:
    data = dsl.importer(artifact_uri=data_uri, artifact_class=dsl.Dataset, reimport=False)
    # a cluster gives every retry of a task the same run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER);
    # kfp.local draws a new one per run, so the retry's run id is given here
    tr = train_op(data=data.output, lang="zh", config=config, steps=int(steps), seed=1,
                  tracking_uri=tracking_uri, resume_root=resume_root,
                  pipeline_root=dsl.PIPELINE_ROOT_PLACEHOLDER, pipeline_run="run-1")
    return tr.outputs["Output"]

local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root)
print("RUN_ID", one_train().output)
'''


def _pipeline_attempt(tmp_path: Path, name: str, args: list[str]) -> subprocess.Popen:
    """The one-task pipeline in its own process (kfp.local starts the task as its child)."""
    script = tmp_path / "retry_pipeline.py"
    script.write_text(RETRY_PIPELINE)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(torch.get_num_threads()))
    log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, str(script), *args, str(tmp_path / name)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_for_pointer(uri: str, proc: subprocess.Popen, min_step: int, timeout: float = 180):
    from components.training.state import ResumeLocation

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"the train task ended before step {min_step} was saved")
        ptr = ResumeLocation(uri).pointer()
        if ptr is not None and ptr["step"] >= min_step:
            return
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no state at step >= {min_step} in {uri} within {timeout} s")


def test_killed_pipeline_train_task_resumes_from_s3(data_dir, reference, s3_bucket, tmp_path,
                                                    sqlite_uri):
    """The pipeline's train task saves its state under resume_root (an s3:// prefix keyed by run,
    language, config and seed), so a retry in a fresh pod (kfp.local gives each run a new, empty
    model folder: the killed attempt's resume.pt is out of reach) resumes from the step the killed
    attempt saved, in the same MLflow run, and ends with the weights of an uninterrupted run.
    A state of another configuration or language is refused in one line; a finished task clears
    its state."""
    import mlflow

    from components.errors import ConfigError, InputError
    from components.training.layout import pipeline_resume_uri
    from components.training.state import ResumeLocation

    cfg = tmp_path / "retry.yaml"  # the reference's config: small3 with RESUME_CFG
    cfg.write_text("base: small3\ndeterministic: true\n" + "".join(
        f"{k}: {json.dumps(v)}\n" for k, v in RESUME_CFG.items()))
    root = f"{s3_bucket}/resume"
    uri = pipeline_resume_uri(root, "run-1", "zh", str(cfg), 1)
    args = [str(data_dir), str(cfg), str(RESUME_STEPS), sqlite_uri, root]
    first = _pipeline_attempt(tmp_path, "attempt1", args)
    _wait_for_pointer(uri, first, min_step=4)
    os.killpg(first.pid, signal.SIGKILL)  # the pod dies: the driver and its task process
    assert first.wait(timeout=30) == -signal.SIGKILL
    saved = ResumeLocation(uri).pointer()
    assert 4 <= saved["step"] < RESUME_STEPS and saved["step"] % RESUME_CFG["resume_every"] == 0
    run_id = saved["run_id"]

    # a state of another configuration or language is refused before anything trains
    kw = dict(steps=RESUME_STEPS, seed=1, tracking_uri=sqlite_uri, resume_uri=uri,
              deterministic=True)
    with pytest.raises(ConfigError, match=r"different configuration \(train\.lr\)") as e:
        train(str(data_dir), "zh", "small3", str(tmp_path / "other"),
              overrides=dict(RESUME_CFG, lr=1e-3), **kw)
    assert "\n" not in str(e.value) and uri in str(e.value)
    with pytest.raises(InputError, match=r"holds a 'zh' run, not 'en'"):
        train(str(data_dir), "en", "small3", str(tmp_path / "en"), overrides=RESUME_CFG, **kw)
    assert ResumeLocation(uri).pointer() == saved

    retry = _pipeline_attempt(tmp_path, "attempt2", args)
    assert retry.wait(timeout=300) == 0, (tmp_path / "attempt2.log").read_text()[-3000:]
    assert f"RUN_ID {run_id}" in (tmp_path / "attempt2.log").read_text()
    summary = json.loads(next((tmp_path / "attempt2").rglob("model/summary.json")).read_text())
    assert summary["resumed_from_step"] == saved["step"] and summary["steps"] == RESUME_STEPS
    model = next((tmp_path / "attempt2").rglob("model/checkpoints")).parent
    for name in ("last.pt", "best.pt"):
        a, b = _state(reference / "checkpoints" / name), _state(model / "checkpoints" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert ResumeLocation(uri).pointer() is None  # the finished task cleared its state
    client = mlflow.MlflowClient(tracking_uri=sqlite_uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(run_id, "loss")}
    assert steps == set(range(1, RESUME_STEPS + 1))


def test_pipeline_resume_location(caplog):
    """Where a pipeline's train task keeps its state: one place per run, language, config and
    seed; the pipeline root when no resume_root is given and the step can write there; none
    (with a warning) on a pipeline root it cannot reach; a bad resume_root or run id refused."""
    from components.errors import ConfigError
    from components.train import task_resume_uri

    uri = task_resume_uri("s3://b-1/r", "minio://mlpipeline/v2", "5f0c", "zh", "small3", 0)
    assert uri.startswith("s3://b-1/r/train-resume/5f0c/zh-small3-") and uri.endswith("-s0")
    others = {task_resume_uri("s3://b-1/r", "", run, lang, config, seed)
              for run, lang, config, seed in [("5f0c", "en", "small3", 0), ("5f0d", "zh",
                                              "small3", 0), ("5f0c", "zh", "small", 0),
                                              ("5f0c", "zh", "small3", 1)]}
    assert len(others) == 4 and uri not in others
    local = task_resume_uri("", "/runs/local/pipeline", "123", "en", "/x/tiny.yaml:row1", 2)
    assert local.startswith("/runs/local/pipeline/train-resume/123/en-x_tiny.yaml_row1-")
    with caplog.at_level(logging.WARNING, logger="refseg"):
        for pipeline_root in ("minio://mlpipeline/v2/artifacts", "{{$.pipeline_root}}", ""):
            assert task_resume_uri("", pipeline_root, "5f0c", "zh", "small3", 0) is None
    assert "a retry of this task starts from step 0" in caplog.text
    with pytest.raises(ConfigError, match="resume_root 'gs://b/r': give an s3:// prefix"):
        task_resume_uri("gs://b/r", "", "5f0c", "zh", "small3", 0)
    for run in ("{{$.pipeline_job_uuid}}", "", "../x"):
        with pytest.raises(ConfigError, match="pipeline run id .* is not a plain name"):
            task_resume_uri("s3://b-1/r", "", run, "zh", "small3", 0)


def test_sigterm_fails_the_pipeline_task_with_its_state_kept(data_dir, tmp_path, sqlite_uri):
    """An evicted pod (SIGTERM): the train task saves its state to the resume location and exits
    with code 143, a failure KFP retries, instead of ending as a success with a half-trained
    model; the state stays for the retry."""
    import threading

    from components.train import EXIT_PREEMPTED, train_task
    from components.training.state import ResumeLocation

    def terminate_once_trainer_listens():
        default = signal.getsignal(signal.SIGTERM)
        while signal.getsignal(signal.SIGTERM) is default:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # the trainer's handler: stop after this step

    uri = str(tmp_path / "resume")
    threading.Thread(target=terminate_once_trainer_listens, daemon=True).start()
    with pytest.raises(SystemExit) as e:
        train_task(str(data_dir), "en", str(tmp_path / "model"), resume_uri=uri,
                   config="small3", steps=50, seed=0, tracking_uri=sqlite_uri,
                   overrides=dict(TINY, resume_every=100, val_every=100))
    assert e.value.code == EXIT_PREEMPTED
    ptr = ResumeLocation(uri).pointer()
    assert ptr is not None and 1 <= ptr["step"] < 50 and ptr["lang"] == "en"
