"""`refseg pipeline compile`: a DAG as KFP IR YAML, ready for a Kubeflow Pipelines server: the
main pipeline (``--pipeline main``, default) or the Table 4 ablation (``--pipeline ablation``)."""

import argparse
import importlib
import os

from components.errors import InputError

# --pipeline NAME -> (module, function)
PIPELINES = {"main": ("pipelines.pipeline", "refseg_pipeline"),
             "ablation": ("pipelines.ablation", "ablation_pipeline")}


def pipeline_function(name: str = "main"):
    """The ``@dsl.pipeline`` function of a pipeline name (``main`` or ``ablation``)."""
    if name not in PIPELINES:
        raise InputError(f"--pipeline {name!r}: choose one of {', '.join(PIPELINES)}")
    module, function = PIPELINES[name]
    return getattr(importlib.import_module(module), function)


def compile_pipeline(out: str, image: str | None = None, pipeline: str = "main") -> str:
    """Compile a DAG to ``out`` (IR YAML). ``image`` overrides REFSEG_IMAGE for every step."""
    if image:
        os.environ["REFSEG_IMAGE"] = image
        import pipelines.ablation
        import pipelines.pipeline
        import pipelines.steps

        importlib.reload(pipelines.steps)
        importlib.reload(pipelines.pipeline)
        importlib.reload(pipelines.ablation)
    from kfp import compiler

    function = pipeline_function(pipeline)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    compiler.Compiler().compile(function, out)
    return out


def add_pipeline_choice(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", default="main", choices=sorted(PIPELINES),
                   help="main (train, evaluate, register per language; default) or ablation "
                        "(Table 4: every ablation row for one language)")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="pipeline.yaml", help="where to write the IR YAML")
    p.add_argument("--image", default=None,
                   help="container image for every step (default: $REFSEG_IMAGE or the release tag)")
    add_pipeline_choice(p)


def run(args) -> int:
    path = compile_pipeline(args.out, args.image, args.pipeline)
    print(f"wrote {path}")
    return 0
