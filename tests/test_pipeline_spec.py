"""The compiled DAG (IR YAML) and the submit/schedule commands against a loopback KFP API server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.kfp_fake_server import FakeKfpServer


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from pipelines.compile import compile_pipeline

    path = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    compile_pipeline(str(path), image="registry.example/refseg:test")
    # two YAML documents: the pipeline spec, then the Kubernetes platform spec
    return path, next(yaml.safe_load_all(path.read_text()))


def _executor(spec: dict, name: str) -> dict:
    return spec["deploymentSpec"]["executors"][f"exec-{name}"]["container"]


def test_compiled_yaml_is_kfp_ir_that_loads_back(compiled):
    path, spec = compiled
    from kfp import components

    loaded = components.load_component_from_file(str(path))
    assert loaded.name == "bilingual-refseg"
    assert spec["pipelineInfo"]["name"] == "bilingual-refseg"
    assert set(spec["components"]) >= {
        "comp-check-translations-op", "comp-tokenize-op", "comp-train-op", "comp-evaluate-op",
        "comp-register-op", "comp-results-op", "comp-for-loop-1",
    }
    # every step runs in the project image and installs nothing at run time
    for name in ("check-translations-op", "tokenize-op", "train-op", "evaluate-op", "register-op",
                 "results-op"):
        c = _executor(spec, name)
        assert c["image"] == "registry.example/refseg:test"
        assert "pip install" not in " ".join(c.get("command", []))


def test_train_task_asks_for_a_gpu_cpu_and_memory(compiled):
    _, spec = compiled
    res = _executor(spec, "train-op")["resources"]
    assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert res["accelerator"]["resourceCount"] == "1"
    assert res["resourceCpuLimit"] == "8" and res["resourceMemoryLimit"] == "48G"
    assert "accelerator" not in _executor(spec, "register-op").get("resources", {})


def test_parallel_branches_over_languages(compiled):
    _, spec = compiled
    loop = spec["root"]["dag"]["tasks"]["for-loop-1"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--languages"
    inner = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]
    assert set(inner) == {"train-op", "evaluate-op", "register-op"}
    assert inner["evaluate-op"]["dependentTasks"] == ["train-op"]
    assert set(inner["register-op"]["dependentTasks"]) == {"evaluate-op", "train-op"}
    assert inner["register-op"]["cachingOptions"].get("enableCache", False) is False
    assert inner["train-op"]["retryPolicy"]["maxRetryCount"] == 3


def test_parameter_defaults(compiled):
    _, spec = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["languages"]["defaultValue"] == ["zh", "en"]
    assert params["config"]["defaultValue"] == "small3"
    assert params["crf"]["defaultValue"] is True
    assert params["margin"]["defaultValue"] == 0.0
    assert params["max_fail_rate"]["defaultValue"] == 0.05
    # every split is evaluated, the gate pools the splits the selection did not see
    assert params["splits"]["defaultValue"] == "" and params["gate_split"]["defaultValue"] == ""
    assert "split" not in params
    assert "defaultValue" not in params["manifest_uri"]  # required


def test_train_task_resumes_from_a_location_keyed_by_the_run(compiled, tmp_path):
    """Both DAGs give every train task the resume root (a pipeline parameter, default empty: the
    pipeline root), the pipeline root and the run id as KFP placeholders, which every retry of
    the task gets the same: the resumable state is where a retry in a fresh pod finds it."""
    from pipelines.compile import compile_pipeline

    ablation = tmp_path / "ablation.yaml"
    compile_pipeline(str(ablation), image="registry.example/refseg:test", pipeline="ablation")
    for spec, loop in ((compiled[1], "comp-for-loop-1"),
                       (next(yaml.safe_load_all(ablation.read_text())), "comp-for-loop-1")):
        root = spec["root"]["inputDefinitions"]["parameters"]["resume_root"]
        assert root["defaultValue"] == "" and root["parameterType"] == "STRING"
        inputs = spec["components"][loop]["dag"]["tasks"]["train-op"]["inputs"]["parameters"]
        assert inputs["resume_root"] == {"componentInputParameter": "pipelinechannel--resume_root"}
        assert inputs["pipeline_run"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
        assert inputs["pipeline_root"]["runtimeValue"]["constant"] == "{{$.pipeline_root}}"
        assert spec["components"][loop]["dag"]["tasks"]["train-op"]["retryPolicy"][
            "maxRetryCount"] == 3


def test_results_step_writes_the_results_table(compiled):
    _, spec = compiled
    outs = spec["components"]["comp-results-op"]["outputDefinitions"]["artifacts"]
    assert outs["results_table"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert outs["results_json"]["artifactType"]["schemaTitle"] == "system.Artifact"
    inner = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]["evaluate-op"]["inputs"]
    assert {"splits", "gate_split"} <= set(inner["parameters"])


def _check_model(body: dict, model_name: str):
    """Deserialize a request body into the kfp-server-api model; unknown fields are an error."""
    import kfp_server_api

    cls = getattr(kfp_server_api, model_name)
    unknown = set(body) - set(cls.attribute_map.values())
    assert not unknown, f"{model_name} has no field(s) {unknown}"

    class _Resp:
        data = json.dumps(body)

    return kfp_server_api.ApiClient().deserialize(_Resp(), model_name)


def test_submit_sends_a_valid_run(monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "secret-token")
    from pipelines.kfp_client import submit

    with FakeKfpServer() as srv:
        r = submit(srv.url, {"manifest_uri": "s3://data/unc/manifest.parquet", "train_steps": 500},
                   run_name="nightly")
        calls = srv.recorder.calls
    assert r["run_id"] == "run-123"
    posts = [c for c in calls if c["method"] == "POST"]
    assert [c["path"] for c in posts] == ["/apis/v2beta1/experiments", "/apis/v2beta1/runs"]
    assert all(c["headers"].get("authorization") == "Bearer secret-token" for c in calls)
    run = _check_model(posts[1]["body"], "V2beta1Run")
    assert run.display_name == "nightly"
    assert run.experiment_id == "exp-1"
    assert run.runtime_config.parameters == {
        "manifest_uri": "s3://data/unc/manifest.parquet", "train_steps": 500}
    # with a platform spec, KFP sends {"pipeline_spec": ..., "platform_spec": ...}
    assert run.pipeline_spec["pipeline_spec"]["pipelineInfo"]["name"] == "bilingual-refseg"
    assert "kubernetes" in run.pipeline_spec["platform_spec"]["platforms"]
    _check_model(posts[0]["body"], "V2beta1Experiment")


def test_schedule_sends_a_weekly_recurring_run(tmp_path):
    from pipelines.kfp_client import schedule

    with FakeKfpServer() as srv:
        # an existing experiment is reused, not created again
        srv.recorder.experiments["exp-9"] = {"experiment_id": "exp-9",
                                             "display_name": "bilingual-refseg"}
        r = schedule(srv.url, "0 3 * * 0", {"manifest_uri": "s3://d/m.parquet"}, token="t")
        calls = srv.recorder.calls
    posts = [c for c in calls if c["method"] == "POST"]
    assert [c["path"] for c in posts] == ["/apis/v2beta1/recurringruns"]
    rr = _check_model(posts[0]["body"], "V2beta1RecurringRun")
    assert rr.trigger.cron_schedule.cron == "0 0 3 * * 0" == r["cron"]
    assert rr.experiment_id == "exp-9"
    assert rr.max_concurrency in ("1", 1)
    assert rr.mode == "ENABLE"
    assert rr.runtime_config.parameters == {"manifest_uri": "s3://d/m.parquet"}


def test_cron_conversion_and_bad_input():
    from pipelines.kfp_client import cron_to_kfp, parse_params

    assert cron_to_kfp("0 3 * * 0") == "0 0 3 * * 0"
    assert cron_to_kfp("30 0 3 * * 0") == "30 0 3 * * 0"
    with pytest.raises(ValueError, match="5 fields"):
        cron_to_kfp("every sunday")
    assert parse_params(["a=1", "b=x", "c=[\"zh\"]"]) == {"a": 1, "b": "x", "c": ["zh"]}
    with pytest.raises(ValueError, match="key=value"):
        parse_params(["oops"])


def test_cli_compile_and_schedule(tmp_path):
    out = tmp_path / "p.yaml"
    exe = [sys.executable, "-m", "pipelines.cli", "pipeline"]
    r = subprocess.run(exe + ["compile", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "bilingual-refseg" in out.read_text()
    with FakeKfpServer() as srv:
        r = subprocess.run(exe + ["schedule", "--host", srv.url, "--cron", "0 3 * * 0",
                                  "--pipeline-file", str(out), "--param", "manifest_uri=s3://d/m"],
                           capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "0 0 3 * * 0" in r.stdout
    r = subprocess.run(exe + ["schedule", "--host", "http://127.0.0.1:9", "--cron", "bad"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "5 fields" in r.stderr


def test_every_step_is_an_mlflow_client_with_the_s3_secret(compiled):
    path, _ = compiled
    docs = list(yaml.safe_load_all(path.read_text()))
    platform = next(d for d in docs if "platforms" in d)
    execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    names = ("check-translations-op", "tokenize-op", "train-op", "evaluate-op", "register-op",
             "results-op")
    assert set(execs) == {f"exec-{n}" for n in names}
    for cfg in execs.values():
        assert cfg["podMetadata"]["labels"] == {"refseg.io/mlflow-client": "true"}
        (vol,) = cfg["secretAsVolume"]
        assert vol["secretName"] == "refseg-s3-credentials"
        assert vol["mountPath"] == "/home/refseg/.aws"
        assert vol["optional"] is True


def test_every_step_runs_as_the_images_non_root_user(compiled):
    """Each step's container runs as the Dockerfile's APP_UID, never root (kfp-kubernetes
    securityContext); the ablation DAG's steps too."""
    import re
    from pathlib import Path

    from pipelines.compile import compile_pipeline

    uid = int(re.search(r"^ARG APP_UID=(\d+)$", Path("Dockerfile").read_text(), re.M).group(1))
    path, _ = compiled
    ablation = path.with_name("ablation.yaml")
    compile_pipeline(str(ablation), image="registry.example/refseg:test", pipeline="ablation")
    for spec in (path, ablation):
        platform = next(d for d in yaml.safe_load_all(spec.read_text()) if "platforms" in d)
        execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        assert execs
        for name, cfg in execs.items():
            assert cfg["securityContext"] == {"runAsUser": str(uid), "runAsGroup": str(uid),
                                              "runAsNonRoot": True}, name


def test_image_roots_reach_the_check_step(compiled, tmp_path):
    """``image_roots`` is a pipeline parameter bound to the check step, and the step function
    passes it on: an image outside the given root is quarantined, inside it is kept."""
    from types import SimpleNamespace

    from components.synth import generate
    from pipelines.steps import check_translations_op

    _, spec = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["image_roots"]["defaultValue"] == ""
    check = spec["root"]["dag"]["tasks"]["check-translations-op"]["inputs"]["parameters"]
    assert check["image_roots"] == {"componentInputParameter": "image_roots"}

    generate(str(tmp_path / "synth"), n_images=2, seed=0)

    def outputs(name):
        return SimpleNamespace(path=str(tmp_path / name), metadata={}, uri=str(tmp_path / name))

    for roots, kept in ((str(tmp_path / "elsewhere"), 0), (f"{tmp_path}/elsewhere,{tmp_path}", None)):
        out = {k: outputs(f"{k}-{kept}") for k in ("clean", "quarantine", "report",
                                                   "validation_site", "summary")}
        check_translations_op.python_func(manifest_uri=str(tmp_path / "synth" / "manifest.parquet"),
                                          max_fail_rate=1.0, image_roots=roots, **out)
        counts = json.loads(open(out["summary"].path, encoding="utf-8").read())
        rows_in = counts["rows_in"]
        assert counts["rows_clean"] == (kept if kept is not None else rows_in), counts
