"""`refseg pipeline schedule`: a recurring run for scheduled retraining (cron)."""

import argparse

from pipelines.kfp_client import add_common, parse_params, schedule


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--cron", required=True,
                   help='standard 5-field cron, e.g. "0 3 * * 0" = Sundays 03:00 (KFP adds seconds)')
    p.add_argument("--name", default="bilingual-refseg-retrain", help="recurring run name")
    p.add_argument("--max-concurrency", type=int, default=1, help="runs allowed at once (default 1)")


def run(args) -> int:
    r = schedule(args.host, args.cron, parse_params(args.param), experiment=args.experiment,
                 name=args.name, pipeline_file=args.pipeline_file, image=args.image,
                 token=args.token, namespace=args.namespace, max_concurrency=args.max_concurrency,
                 service_account=args.service_account, pipeline=args.pipeline)
    print(f"created recurring run {r['recurring_run_id']} with KFP cron {r['cron']!r}")
    return 0
