"""`refseg pipeline submit`: one run of the DAG on a Kubeflow Pipelines server."""

import argparse

from pipelines.kfp_client import add_common, parse_params, submit


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--run-name", default=None, help="display name of the run")


def run(args) -> int:
    r = submit(args.host, parse_params(args.param), experiment=args.experiment,
               run_name=args.run_name, pipeline_file=args.pipeline_file, image=args.image,
               token=args.token, namespace=args.namespace, service_account=args.service_account,
               pipeline=args.pipeline)
    print(f"submitted run {r['run_id']}: {r['url']}")
    return 0
