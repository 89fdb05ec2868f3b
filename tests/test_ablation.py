"""The Table 4 pipeline: its plan, its table, its compiled DAG, and a real run of every row through
``kfp.local`` on a tiny synthetic set (MLflow parent run with a child per row, the HTML table in
headless chromium)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from components.errors import ConfigError, InputError
from tests.conftest import TINY


def test_plan_rows_seeds_and_the_reported_split():
    import configs
    from components.ablation import plan

    every = plan("small3")
    assert [i["row"] for i in every] == configs.ablation_names() and len(every) == 10
    assert every[3] == {"row": "row4_le_la", "config": "small3:row4_le_la", "seed": 0}
    items = plan("small", rows="10,row1_baseline", seeds="1,0")
    assert [(i["row"], i["seed"]) for i in items] == [
        ("row1_baseline", 1), ("row1_baseline", 0), ("row10_full", 1), ("row10_full", 0)]
    with pytest.raises(ConfigError, match="unknown ablation row 'row11'"):
        plan("small3", rows="row11")
    with pytest.raises(ConfigError, match="comma-separated integers"):
        plan("small3", seeds="0,a")
    # best.pt is selected on val: a table on val would be optimistic
    with pytest.raises(ConfigError, match="selection split of small3"):
        plan("small3", split="val")
    assert plan("small3", rows="2", split="testA")[0]["row"] == "row2_le"


def test_a_row_applies_on_a_yaml_file_of_the_users(tmp_path):
    import configs
    from components.training.config import load_run_config

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    model, _, explicit = load_run_config(f"{cfg}:row9_mutan_le_la")
    assert model.name == "tiny:row9_mutan_le_la" and model.input_size == 64
    assert model.levels == ["res3", "res4", "res5"] and model.use_mutan and not model.use_claf
    assert "input_size" in explicit  # the user's own fields stay explicit
    assert configs.user_file("small3:row1_baseline") is None


def _evaluation(config: str, seed: int, iou: float) -> dict:
    metrics = {f"gate_{m}{s}": iou + (0.1 if s else 0.0)
               for m in ("overall_iou", "prec_50", "prec_60", "prec_70", "prec_80", "prec_90")
               for s in ("", "_crf")}
    return {"lang": "en", "gate_split": "testA+testB", "select_split": "val", "metrics": metrics,
            "train": {"config": config, "seed": seed, "run_id": f"r-{config}-{seed}"}}


def test_table_mean_and_spread_over_seeds(capsys):
    from components.evaluation.ablation_page import page_html
    from components.evaluation.ablation_table import ablation_table, parent_metrics, row_modules

    items = [{"row": r, "config": f"small3:{r}", "seed": s}
             for r in ("row1_baseline", "row10_full") for s in (0, 1, 2)]
    ious = {("row1_baseline", 0): 0.2, ("row1_baseline", 1): 0.3, ("row1_baseline", 2): 0.4,
            ("row10_full", 0): 0.6, ("row10_full", 1): 0.7, ("row10_full", 2): 0.65}
    evs = [_evaluation(f"small3:{r}", s, v) for (r, s), v in ious.items()][::-1]
    modules = {"row1_baseline": row_modules({"levels": ["res5"]}),
               "row10_full": row_modules({"levels": ["res3", "res4", "res5"], "use_mutan": True,
                                          "use_le": True, "use_la": True, "use_claf": True,
                                          "use_convlstm": True})}
    doc = ablation_table(items, evs, split="gate", crf=True, modules=modules)
    assert [r["row"] for r in doc["rows"]] == ["row1_baseline", "row10_full"]
    assert len(doc["metrics"]) == 12 and doc["split"] == "gate"
    full = doc["rows"][1]
    assert full["number"] == 10 and full["n_seeds"] == 3 and full["seeds"] == [0, 1, 2]
    s = full["metrics"]["overall_iou"]
    assert s["mean"] == pytest.approx(0.65) and s["std"] == pytest.approx(0.05)
    assert (s["min"], s["max"]) == (0.6, 0.7)
    assert full["metrics"]["overall_iou_crf"]["mean"] == pytest.approx(0.75)
    assert full["modules"] == {"mutan": True, "le": True, "la": True, "claf": True,
                               "convlstm": True, "levels": ["res3", "res4", "res5"]}
    assert full["runs"]["1"] == "r-small3:row10_full-1"
    pm = parent_metrics(doc)
    assert pm["row1_overall_iou"] == pytest.approx(0.3) and "row10_prec_90_crf_std" in pm
    one = ablation_table(items[:1], evs, split="gate", crf=False, modules=modules)
    assert one["rows"][0]["metrics"]["overall_iou"]["std"] is None
    assert "overall_iou_crf" not in one["rows"][0]["metrics"]
    page = page_html(doc)
    assert page.count('class="bar"') == 4
    assert re.search(r'id="row10_full-overall_iou"[^>]*>65.00 <span class="sd">±5.00', page)
    from pipelines.ablation_run import print_table

    print_table(doc)
    lines = capsys.readouterr().out.splitlines()
    full_line = next(line for line in lines if "row10_full" in line)
    assert "65.00±5.0" in full_line and "75.00±5.0" in full_line and full_line.count("✓") == 5
    with pytest.raises(InputError, match="row10_full seed 3: no evaluation"):
        ablation_table([*items, {"row": "row10_full", "config": "small3:row10_full",
                                 "seed": 3}], evs, split="gate", crf=True, modules=modules)
    with pytest.raises(InputError, match="metric val_overall_iou missing"):
        ablation_table(items, evs, split="val", crf=False, modules=modules)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from pipelines.compile import compile_pipeline

    path = tmp_path_factory.mktemp("kfp") / "ablation.yaml"
    compile_pipeline(str(path), image="registry.example/refseg:test", pipeline="ablation")
    return next(yaml.safe_load_all(path.read_text()))


def test_compiled_ablation_dag(compiled):
    spec = compiled
    assert spec["pipelineInfo"]["name"] == "bilingual-refseg-ablation"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["preset"]["defaultValue"] == "small3_os8" and params["rows"]["defaultValue"] == ""
    assert params["seeds"]["defaultValue"] == "0" and params["split"]["defaultValue"] == "gate"
    assert params["crf"]["defaultValue"] is True and "defaultValue" not in params["manifest_uri"]
    assert {"lang", "steps", "tracking_uri", "max_fail_rate"} <= set(params)
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"check-translations-op", "tokenize-op", "ablation-start-op",
                          "for-loop-1", "ablation-table-op"}
    assert tasks["ablation-start-op"]["dependentTasks"] == ["tokenize-op"]
    loop = tasks["for-loop-1"]["parameterIterator"]
    assert loop["items"]["inputParameter"] == "pipelinechannel--ablation-start-op-Output"
    inner = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]
    assert set(inner) == {"train-op", "evaluate-op"}  # nothing registered
    train_in = inner["train-op"]["inputs"]["parameters"]
    for name in ("config", "seed", "parent_run_id"):  # each branch's row, seed and parent run
        assert train_in[name]["parameterExpressionSelector"] == f'parseJson(string_value)["{name}"]'
    assert "register-op" not in json.dumps(spec)
    table_in = tasks["ablation-table-op"]["inputs"]["parameters"]
    assert table_in["evaluations"]["taskOutputParameter"]["producerTask"] == "for-loop-1"
    outs = spec["components"]["comp-ablation-table-op"]["outputDefinitions"]["artifacts"]
    assert outs["table"]["artifactType"]["schemaTitle"] == "system.HTML"
    # the main pipeline's train step keeps working without a parent run
    assert spec["components"]["comp-train-op"]["inputDefinitions"]["parameters"][
        "parent_run_id"]["defaultValue"] == ""


def test_submit_and_schedule_the_ablation_pipeline(tmp_path):
    import subprocess
    import sys

    from pipelines.kfp_client import submit
    from tests.kfp_fake_server import FakeKfpServer

    with FakeKfpServer() as srv:
        r = submit(srv.url, {"manifest_uri": "s3://d/m.parquet", "seeds": "0,1,2"}, token="t",
                   pipeline="ablation")
        body = [c for c in srv.recorder.calls if c["method"] == "POST"][-1]["body"]
    assert r["run_id"] == "run-123" and body["display_name"] == "bilingual-refseg-ablation"
    spec = body["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "bilingual-refseg-ablation"
    out = tmp_path / "a.yaml"
    exe = [sys.executable, "-m", "pipelines.cli", "pipeline"]
    r = subprocess.run(exe + ["compile", "--pipeline", "ablation", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with FakeKfpServer() as srv:
        r = subprocess.run(exe + ["schedule", "--pipeline", "ablation", "--host", srv.url,
                                  "--cron", "0 3 * * 0", "--param", "manifest_uri=s3://d/m"],
                           capture_output=True, text=True)
        rr = [c for c in srv.recorder.calls if c["method"] == "POST"][-1]["body"]
    assert r.returncode == 0, r.stderr
    assert "bilingual-refseg-ablation" in json.dumps(rr["pipeline_spec"])
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", "ablation", "--rows", "row11"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "unknown ablation row 'row11'" in r.stderr


def _run(tmp_path, rows: str, seeds: str):
    from components.synth import generate
    from pipelines.ablation_run import run_ablation

    data = tmp_path / "data"
    generate(str(data), n_images=24, seed=5)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    return run_ablation(str(data / "manifest.parquet"), root=str(tmp_path / "run"), lang="en",
                        preset=str(cfg), rows=rows, steps=2, seeds=seeds, crf=False), cfg


def _check_mlflow(doc, n_children):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=doc["tracking_uri"])
    parent = client.get_run(doc["parent_run_id"])
    assert parent.info.run_name == "ablation-en" and parent.info.status == "FINISHED"
    assert parent.data.tags["refseg.step"] == "ablation"
    first = doc["rows"][0]
    assert parent.data.metrics[f"row{first['number']}_overall_iou"] == pytest.approx(
        first["metrics"]["overall_iou"]["mean"])
    if first["n_seeds"] > 1:
        assert parent.data.metrics[f"row{first['number']}_overall_iou_std"] == pytest.approx(
            first["metrics"]["overall_iou"]["std"])
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "ablation")}
    assert arts == {"ablation/ablation.json", "ablation/ablation.html"}
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == n_children
    runs = {r for row in doc["rows"] for r in row["runs"].values()}
    assert {c.info.run_id for c in children} == runs
    return children


@pytest.mark.slow
def test_every_row_through_kfp_local(tmp_path):
    import configs

    doc, cfg = _run(tmp_path, rows="", seeds="0")
    assert [r["row"] for r in doc["rows"]] == configs.ablation_names()
    assert doc["split"] == "gate" and doc["split_detail"] == "testA+testB"
    assert doc["select_split"] == "val" and doc["crf"] is False and doc["steps"] == 2
    stored = json.loads(open(doc["table_json"], encoding="utf-8").read())
    assert stored["rows"] == doc["rows"]
    assert open(doc["table"], encoding="utf-8").read() == open(doc["table_artifact"],
                                                               encoding="utf-8").read()
    for row in doc["rows"]:
        assert row["config"] == f"{cfg}:{row['row']}" and row["n_seeds"] == 1
        assert set(row["metrics"]) == {"overall_iou", "prec_50", "prec_60", "prec_70",
                                       "prec_80", "prec_90"}
        assert 0.0 <= row["metrics"]["overall_iou"]["mean"] <= 1.0
    assert doc["rows"][0]["modules"]["levels"] == ["res5"]
    assert doc["rows"][9]["modules"] == {"mutan": True, "le": True, "la": True, "claf": True,
                                         "convlstm": True, "levels": ["res3", "res4", "res5"]}
    children = _check_mlflow(doc, 10)
    assert {c.data.params["config"] for c in children} == {r["config"] for r in doc["rows"]}
    _render(doc, tmp_path)


def _render(doc, tmp_path):
    """The table page in headless chromium: a cell per row, a bar per row, no error."""
    from tests.test_evaluate import CHROMIUM, _chromium

    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (apt-get install -y chromium)")
    res = _chromium("--virtual-time-budget=3000", "--dump-dom",
                    f"file://{doc['table']}", profile=str(tmp_path / "profile"))
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    for row in doc["rows"]:
        cell = re.search(rf'id="{row["row"]}-overall_iou"[^>]*>([\d.]+)', dom)
        assert cell and float(cell.group(1)) == pytest.approx(
            100 * row["metrics"]["overall_iou"]["mean"], abs=0.006)
    assert len(re.findall(r'<rect class="bar"', dom)) == len(doc["rows"]) * (
        2 if doc["crf"] else 1)
    assert dom.count("✓") == sum(sum(bool(v) for k, v in r["modules"].items() if k != "levels")
                                 for r in doc["rows"])
