"""The whole DAG end to end through the real ``kfp.local`` runner on a tiny synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY


@pytest.mark.slow
def test_local_pipeline_end_to_end(tmp_path):
    from components.synth import generate
    from pipelines.local_run import run_pipeline

    data = tmp_path / "data"
    generate(str(data), n_images=24, seed=5)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    root = tmp_path / "run"
    res = run_pipeline(str(data / "manifest.parquet"), root=str(root), languages=["zh", "en"],
                       config=str(cfg), steps=8, crf=True, seed=0, floor=0.0)
    # the check step's outputs, found through the pipeline's own results
    assert Path(res["validation_report"]).read_text().lower().count("<html") >= 1
    summary = res["check_summary"]
    assert summary["rows_in"] == summary["rows_clean"] + summary["rows_quarantined"] > 0
    pipeline_root = root / "pipeline"
    for lang in ("zh", "en"):
        assert any(pipeline_root.rglob(f"data/vocab_{lang}.json"))
        assert any(pipeline_root.rglob(f"data/shards/{lang}/train.npz"))
        r = res["languages"][lang]
        assert Path(r["evaluation_report"]).read_text().lower().count("<html") >= 1
        assert Path(r["per_sample"]).stat().st_size > 0
        assert 0.0 <= r["metrics"]["val_overall_iou"] <= 1.0
        assert "val_overall_iou_crf" in r["metrics"]
        # every split evaluated; the gate pools the test splits, apart from the selection split
        assert r["splits"] == ["val", "testA", "testB"] and r["select_split"] == "val"
        assert r["gate_split"] == "testA+testB"
        assert 0.0 <= r["metrics"]["gate_overall_iou_crf"] <= 1.0
        assert r["registration"]["gate_metric"] == "gate_overall_iou_crf"
        assert r["registration"]["gate_value"] == pytest.approx(
            r["metrics"]["gate_overall_iou_crf"])
        # a champion is registered for each language (floor 0: the first version wins)
        assert r["registration"]["lang"] == lang and r["registration"]["champion"] is True
        assert r["versions"] == [1]
        assert r["champion"] == 1
    assert len(list(pipeline_root.rglob("model/checkpoints/best.pt"))) == 2
    # the results table: one row per language, the splits as columns, in JSON and in HTML
    table = res["results"]
    assert table["splits"] == ["val", "testA", "testB"]
    assert [(row["dataset"], row["lang"]) for row in table["rows"]] == [("synth", "en"),
                                                                         ("synth", "zh")]
    for row in table["rows"]:
        m = res["languages"][row["lang"]]["metrics"]
        assert row["splits"]["testB"]["overall_iou_crf"] == pytest.approx(
            m["testB_overall_iou_crf"])
    page = Path(res["results_table"]).read_text(encoding="utf-8")
    assert 'id="synth-zh-testA-crf"' in page and 'id="synth-en-val-iou"' in page
    # the MLflow store lives under the run folder
    assert (root / "mlflow.db").exists()
    assert any((root / "mlartifacts").rglob("best.pt"))
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=res["tracking_uri"])
    versions = client.search_model_versions("name='bilingual-refseg-zh'")
    assert len(versions) == 1


def test_a_failed_task_is_one_line_naming_the_log(tmp_path):
    """A manifest that does not exist fails the first task: the runner says which, and where the
    log with the task's traceback is; the CLI prints that as one line and exits 1."""
    import subprocess
    import sys

    root = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", "pipeline", "run", "--manifest",
                        str(tmp_path / "missing.parquet"), "--root", str(root), "--steps", "1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("refseg: error: pipeline failed") and "pipeline.log" in last
    assert "check-translations" in last
    assert "Traceback" in (root / "pipeline.log").read_text()


def test_run_locally_leaves_print_as_it_found_it(tmp_path, monkeypatch):
    """kfp.local swaps builtins.print while a task runs; two ParallelFor branches in threads can
    leave one indenting swap behind (a later 'refseg: error:' line then starts with spaces).
    run_locally puts back the print it found, also when the DAG fails."""
    import builtins

    from pipelines.local_run import PipelineFailedError, run_locally

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    before = builtins.print

    def leaves_a_swap(uri):
        builtins.print = lambda *a, **k: before("    ", *a, **k)
        return "done"

    def fails(uri):
        builtins.print = lambda *a, **k: None
        raise RuntimeError("task 'x' failed")

    assert run_locally(tmp_path / "a", False, 1, leaves_a_swap)[0] == "done"
    assert builtins.print is before
    with pytest.raises(PipelineFailedError, match="task 'x' failed"):
        run_locally(tmp_path / "b", False, 1, fails)
    assert builtins.print is before
