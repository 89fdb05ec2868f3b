"""Shared fixtures: a real S3 endpoint (moto's ThreadedMotoServer over HTTP) and a small synthetic
bilingual dataset generated once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# A tiny preset for kfp.local runs (the pipeline and ablation tests): the small net, narrower.
TINY = """\
base: small
input_size: 64
backbone_widths: [8, 16, 16, 32]
c_v: 32
c_l: 32
c_m: 32
convlstm_hidden: 16
"""


@pytest.fixture(scope="session")
def s3_endpoint():
    """Start moto's S3 server on 127.0.0.1 and point boto3 at it through the environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": url,
            "MLFLOW_S3_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    try:
        yield url
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_S3_ENV = (
    "AWS_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)


@pytest.fixture()
def s3_bucket(s3_endpoint, request):
    """A fresh bucket on the moto endpoint; yields its s3:// prefix."""
    import boto3

    name = "t-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:50]
    name = name.rstrip("-")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    yield f"s3://{name}"


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory):
    """A small synthetic bilingual dataset (generated once). Returns its folder (manifest.parquet inside)."""
    from components.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(str(out), n_images=60, seed=7)
    return out


@pytest.fixture(scope="session")
def data_dir(synth_dataset, tmp_path_factory):
    """The synthetic dataset through ``tokenize`` (16-d vectors): what train/refdata tests read."""
    from components.tokenize import tokenize

    out = tmp_path_factory.mktemp("tok")
    tokenize(str(Path(synth_dataset) / "manifest.parquet"), str(out), zh_dim=16, en_dim=16,
             w2v_epochs=1)
    return out
