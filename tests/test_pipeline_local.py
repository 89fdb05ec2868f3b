"""The whole DAG end to end through the real ``kfp.local`` runner on a tiny synthetic dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY = """\
base: small
input_size: 64
backbone_widths: [8, 16, 16, 32]
c_v: 32
c_l: 32
c_m: 32
convlstm_hidden: 16
"""


@pytest.mark.slow
def test_local_pipeline_end_to_end(tmp_path):
    from components.synth import generate
    from pipelines.local_run import run_pipeline

    data = tmp_path / "data"
    generate(str(data), n_images=24, seed=5)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    root = tmp_path / "run"
    res = run_pipeline(str(data / "manifest.parquet"), root=str(root), languages=("zh", "en"),
                       preset=str(cfg), train_steps=8, crf=True, seed=0, floor=0.0)
    run_dir = Path(res["run_dir"])
    # every step's outputs exist
    assert (run_dir / "check-translations-op" / "clean").stat().st_size > 0
    assert (run_dir / "check-translations-op" / "report").read_text().lower().count("<html") >= 1
    summary = json.loads((run_dir / "check-translations-op" / "summary").read_text())
    assert summary["rows_in"] == summary["rows_clean"] + summary["rows_quarantined"]
    tok = run_dir / "tokenize-op" / "data"
    for lang in ("zh", "en"):
        assert (tok / f"vocab_{lang}.json").exists()
        assert (tok / "shards" / lang / "train.npz").exists()
    for i, lang in enumerate(("zh", "en")):
        it = run_dir / f"for-loop-1-iteration-{i}"
        assert (it / "train-op" / "model" / "checkpoints" / "best.pt").exists()
        assert (it / "evaluate-op" / "report").exists()
        assert (it / "evaluate-op" / "per_sample").exists()
        r = res["languages"][lang]
        assert 0.0 <= r["metrics"]["val_overall_iou"] <= 1.0
        assert "val_overall_iou_crf" in r["metrics"]
        # a champion is registered for each language (floor 0: the first version wins)
        assert r["versions"] == [1]
        assert r["champion"] == 1
    # the MLflow store lives under the run folder
    assert (root / "mlflow.db").exists()
    assert any((root / "mlartifacts").rglob("best.pt"))
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=res["tracking_uri"])
    versions = client.search_model_versions("name='bilingual-refseg-zh'")
    assert len(versions) == 1
