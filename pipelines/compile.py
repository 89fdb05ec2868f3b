"""`refseg pipeline compile`: the DAG as KFP IR YAML, ready for a Kubeflow Pipelines server."""

import argparse
import os


def compile_pipeline(out: str, image: str | None = None) -> str:
    """Compile the DAG to ``out`` (IR YAML). ``image`` overrides REFSEG_IMAGE for every step."""
    if image:
        os.environ["REFSEG_IMAGE"] = image
        import importlib

        import pipelines.pipeline
        import pipelines.steps

        importlib.reload(pipelines.steps)
        importlib.reload(pipelines.pipeline)
    from kfp import compiler

    from pipelines.pipeline import refseg_pipeline

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    compiler.Compiler().compile(refseg_pipeline, out)
    return out


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="pipeline.yaml", help="where to write the IR YAML")
    p.add_argument("--image", default=None,
                   help="container image for every step (default: $REFSEG_IMAGE or the release tag)")


def run(args) -> int:
    path = compile_pipeline(args.out, args.image)
    print(f"wrote {path}")
    return 0
