"""Talking to a Kubeflow Pipelines server: one run, or a recurring (cron) run.

Credentials are taken the standard ways of ``kfp.Client``: ``--token`` or ``KF_PIPELINES_TOKEN``
(bearer token), ``KF_PIPELINES_COOKIE`` (e.g. an authservice session cookie), the in-cluster service
account token (``KF_PIPELINES_SA_TOKEN_PATH``), or the kube config context.
"""

import argparse
import json
import os
import tempfile

from components.errors import InputError
from components.provenance import EXPERIMENT

DEFAULT_EXPERIMENT = EXPERIMENT


def parse_params(pairs: list[str] | None) -> dict:
    """``key=value`` pairs -> dict; values are parsed as JSON when they can be (numbers, lists)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise InputError(f"--param expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cron_to_kfp(expr: str) -> str:
    """KFP's cron has a leading seconds field: a standard 5-field expression gets ``0`` prepended."""
    fields = expr.split()
    if len(fields) == 5:
        return "0 " + expr.strip()
    if len(fields) == 6:
        return expr.strip()
    raise InputError(f"cron expression {expr!r} must have 5 fields (min hour dom mon dow) or 6")


def make_client(host: str, token: str | None = None, namespace: str = "kubeflow"):
    import warnings

    import kfp

    token = token or os.environ.get("KF_PIPELINES_TOKEN")
    cookies = os.environ.get("KF_PIPELINES_COOKIE")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host, existing_token=token, cookies=cookies, namespace=namespace)


def _package(pipeline_file: str | None, image: str | None, pipeline: str = "main") -> str:
    if pipeline_file:
        return pipeline_file
    from pipelines.compile import compile_pipeline

    path = os.path.join(tempfile.mkdtemp(prefix="refseg-kfp-"), "pipeline.yaml")
    return compile_pipeline(path, image, pipeline)


def submit(host: str, params: dict, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
           pipeline_file: str | None = None, image: str | None = None, token: str | None = None,
           namespace: str = "kubeflow", service_account: str | None = None,
           pipeline: str = "main") -> dict:
    client = make_client(host, token, namespace)
    package = _package(pipeline_file, image, pipeline)
    result = client.create_run_from_pipeline_package(
        package, arguments=params,
        run_name=run_name or ("bilingual-refseg" if pipeline == "main" else
                              f"bilingual-refseg-{pipeline}"),
        experiment_name=experiment, namespace=namespace, service_account=service_account,
    )
    return {"run_id": result.run_id, "url": f"{host.rstrip('/')}/#/runs/details/{result.run_id}"}


def schedule(host: str, cron: str, params: dict, experiment: str = DEFAULT_EXPERIMENT,
             name: str = "bilingual-refseg-retrain", pipeline_file: str | None = None,
             image: str | None = None, token: str | None = None, namespace: str = "kubeflow",
             max_concurrency: int = 1, service_account: str | None = None,
             pipeline: str = "main") -> dict:
    kfp_cron = cron_to_kfp(cron)  # validate before talking to the server
    client = make_client(host, token, namespace)
    package = _package(pipeline_file, image, pipeline)
    exp = client.create_experiment(experiment, namespace=namespace)
    rr = client.create_recurring_run(
        experiment_id=exp.experiment_id, job_name=name, cron_expression=kfp_cron,
        params=params, pipeline_package_path=package, max_concurrency=max_concurrency,
        no_catchup=True, enabled=True, service_account=service_account,
    )
    return {"recurring_run_id": rr.recurring_run_id, "cron": kfp_cron}


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kfp.example.com/pipeline")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="pipeline parameter (repeatable), e.g. manifest_uri=s3://data/unc/manifest.parquet")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="KFP experiment name")
    p.add_argument("--pipeline-file", default=None, help="compiled IR YAML (default: compile now)")
    p.add_argument("--image", default=None, help="container image for the steps when compiling")
    p.add_argument("--token", default=None, help="bearer token (default: $KF_PIPELINES_TOKEN)")
    p.add_argument("--namespace", default="kubeflow", help="KFP namespace (multi-user mode)")
    p.add_argument("--service-account", default=None, help="Kubernetes service account of the run")
    from pipelines.compile import add_pipeline_choice

    add_pipeline_choice(p)
