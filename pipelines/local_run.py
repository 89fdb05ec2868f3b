"""`refseg pipeline run`: the whole DAG on this machine through ``kfp.local`` (SubprocessRunner,
use_venv=False): the very same pipeline that runs on a cluster, task by task, in this environment.

Everything goes under one folder (default ``runs/local/``): the pipeline's artifacts
(``pipeline/``), the MLflow store (``mlflow.db`` and ``mlartifacts/``), the full log
(``pipeline.log``) and ``results.json``. The console shows one line per task and every step's
progress lines (``[train zh] step ...``). The results come from the pipeline's own output (its
results step) and from the MLflow registry, never from printed lines."""

import argparse
import builtins
import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.errors import InputError, RefsegError
from components.provenance import EXPERIMENT
from components.serving import model_name

log = logging.getLogger("refseg.pipeline")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# kfp.local's task lines, every step's progress lines ("[train zh] ..."), and errors
_SHOW = re.compile(
    r"Executing task|finished with status|Pipeline .* finished|"
    r"^\s*\[(check[- ]translations|tokenize|train|evaluate|register|results|ablation)\b[^\]]*\]|"
    r"Error|Traceback"
)
LANGS = ("zh", "en")


class PipelineFailedError(RefsegError):
    """A task of the pipeline failed; the message names it and the log that holds its trace."""


@dataclass
class PipelineOptions:
    """The pipeline's parameters, named as the CLI flags and the DAG's parameters are."""

    manifest_uri: str
    root: str = "runs/local"
    languages: list[str] = field(default_factory=lambda: list(LANGS))
    config: str = "small3"
    steps: int = 0
    crf: bool = True
    splits: str = ""  # evaluated splits, comma-separated; "" = every split but train
    gate_split: str = ""  # "testA+testB"; "" = every evaluated split but the selection split
    margin: float = 0.0
    floor: float = 0.3
    max_fail_rate: float = 0.05
    image_roots: str = ""  # comma-separated; "" = the manifest's folder and any s3:// object
    resume_root: str = ""  # where train steps keep resumable state; "" = the pipeline root
    seed: int = 0
    zh_vectors: str = ""
    en_vectors: str = ""
    verbose: bool = False

    def __post_init__(self) -> None:
        bad = [x for x in self.languages if x not in LANGS]
        if bad or not self.languages:
            raise InputError(f"unknown language(s) {bad or self.languages}; use zh and/or en")
        from components.evaluation.splits import parse_gate, parse_splits
        from components.training.config import load_run_config

        # bad split names and a config that cannot load fail here, before any task runs
        parse_splits(self.splits)
        parse_gate(self.gate_split)
        load_run_config(self.config)


def mlflow_uri_for(root: str) -> str:
    return f"sqlite:///{os.path.abspath(root)}/mlflow.db"


def ensure_experiment(tracking_uri: str, artifact_root: str) -> str:
    """Create the experiment with its artifacts under the run folder (not ./mlruns)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    Path(artifact_root).mkdir(parents=True, exist_ok=True)
    return client.create_experiment(EXPERIMENT, artifact_location=Path(artifact_root).as_uri())


class _Tee:
    """Send this process's stdout/stderr (and its children's) to a log file; echo chosen lines."""

    def __init__(self, log_path: str, verbose: bool):
        self.log_path, self.verbose = log_path, verbose

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = os.dup(1), os.dup(2)
        self.console = os.fdopen(os.dup(1), "w", buffering=1)
        self.fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(self.fd, 1)
        os.dup2(self.fd, 2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()
        return self

    def _follow(self):
        with open(self.log_path, errors="replace") as fh:
            fh.seek(0, 2)
            while True:
                line = fh.readline()
                if not line:
                    if self.stop.is_set():
                        return
                    time.sleep(0.2)
                    continue
                plain = _ANSI.sub("", line.rstrip())
                if self.verbose or _SHOW.search(plain):
                    self.console.write("  " + plain.strip() + "\n")

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        self.stop.set()
        self.thread.join(timeout=5)
        os.close(self.fd)
        self.console.close()
        return False


def registry_state(tracking_uri: str, lang: str) -> dict:
    """Versions of ``bilingual-refseg-<lang>`` and the one the ``champion`` alias points at."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    name = model_name(lang)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    try:
        champion = int(client.get_model_version_by_alias(name, "champion").version)
    except MlflowException as exc:  # no alias yet: every version was refused or is a challenger
        log.debug("%s has no champion: %s", name, exc)
        champion = None
    return {"versions": versions, "champion": champion}


def _uri_path(uri: str | None) -> str | None:
    return uri[len("file://"):] if uri and uri.startswith("file://") else uri


def collect_results(pipeline_output: str, tracking_uri: str) -> dict:
    """The results step's JSON, flattened for the console, plus the registry's state."""
    out = json.loads(pipeline_output)
    check = out.get("check", {})
    res: dict = {"validation_report": _uri_path(check.get("report")), "check_summary": check,
                 "results": out.get("results"),
                 "results_table": _uri_path(out.get("results_table")), "languages": {}}
    for lang, r in sorted(out.get("languages", {}).items()):
        res["languages"][lang] = {
            "metrics": r["metrics"], "splits": r["splits"], "gate_split": r["gate_split"],
            "select_split": r["select_split"],
            "evaluation_report": _uri_path(r["evaluation_report"]),
            "per_sample": _uri_path(r["per_sample"]), "registration": r["registration"],
            **registry_state(tracking_uri, lang),
        }
    return res


def print_results(res: dict, root: str, tracking_uri: str) -> None:
    """The results table (overall IoU per split, without / with DenseCRF), then the registry."""
    table = res.get("results") or {"splits": [], "rows": []}
    print("\nOverall IoU per split (without / with DenseCRF)")
    head = f"{'dataset':<10} {'lang':<5}" + "".join(f" {s:>15}" for s in table["splits"]) + \
        f"  {'gate':<12} {'versions':<10} champion"
    print(head)
    print("-" * len(head))
    for row in table["rows"]:
        r = res["languages"].get(row["lang"], {})
        cells = ""
        for s in table["splits"]:
            c = row["splits"].get(s) or {}
            cells += f" {_pair(c.get('overall_iou'), c.get('overall_iou_crf')):>15}"
        print(f"{str(row['dataset']):<10} {row['lang']:<5}{cells}  "
              f"{str(row.get('gate_split') or '-'):<12} "
              f"{','.join(map(str, r.get('versions', []))):<10} "
              f"{'v' + str(r['champion']) if r.get('champion') else '-'}")
    print(f"\nvalidation report : {res.get('validation_report')}")
    print(f"results table     : {res.get('results_table')}")
    for lang, r in res["languages"].items():
        print(f"evaluation report ({lang}): {r.get('evaluation_report')}")
    print(f"everything        : {os.path.abspath(root)}")
    print(f"MLflow UI         : mlflow ui --backend-store-uri {tracking_uri} --port 5000")


def _pair(a, b) -> str:
    def f(v):
        return f"{v:.3f}" if isinstance(v, (int, float)) else "-"

    return f"{f(a)}/{f(b)}"


def _share_cores(parallel_tasks: int) -> int:
    """kfp.local runs the ParallelFor branches at the same time, each task a process. Give each
    an equal share of the cores (OMP/MKL threads, which torch follows): two OpenMP pools spinning
    on the same cores ran the train steps about 10 times slower (measured with 2 x 2 threads on 2
    cores). An explicit OMP_NUM_THREADS in the environment wins."""
    share = max(1, (os.cpu_count() or 1) // max(1, parallel_tasks))
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(share)
        os.environ.setdefault("MKL_NUM_THREADS", str(share))
    return int(os.environ["OMP_NUM_THREADS"])


class _ThreadShare:
    """The thread share of :func:`_share_cores` for the task processes only, not the caller."""

    KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

    def __init__(self, parallel_tasks: int):
        self.parallel_tasks = parallel_tasks

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.KEYS}
        _share_cores(self.parallel_tasks)
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        return False


def init_local(root: Path) -> None:
    """kfp.local in this environment (SubprocessRunner, no venv), artifacts under ROOT."""
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(root / "pipeline"), workspace_root=str(root / "workspace"))


def _run_dag(opts: PipelineOptions, root: Path, tracking_uri: str) -> str:
    """Run the DAG under kfp.local; returns its output (the results step's JSON)."""
    from pipelines.pipeline import refseg_pipeline

    init_local(root)
    task = refseg_pipeline(
        manifest_uri=opts.manifest_uri, languages=list(opts.languages), config=opts.config,
        steps=opts.steps, crf=opts.crf, splits=opts.splits, gate_split=opts.gate_split,
        margin=opts.margin, floor=opts.floor,
        max_fail_rate=opts.max_fail_rate, tracking_uri=tracking_uri,
        zh_vectors=opts.zh_vectors, en_vectors=opts.en_vectors, seed=opts.seed,
        image_roots=opts.image_roots, resume_root=opts.resume_root)
    return task.output


def run_locally(root: Path, verbose: bool, parallel_tasks: int, dag) -> tuple[str, dict]:
    """Run ``dag(tracking_uri) -> output`` under kfp.local with everything under ``root`` (the
    MLflow store, the log), the cores shared by ``parallel_tasks``. Returns (the DAG's output,
    {seconds, tracking_uri, log, root}). A failed task raises :class:`PipelineFailedError`."""
    (root / "pipeline").mkdir(parents=True, exist_ok=True)
    tracking_uri = mlflow_uri_for(str(root))
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    ensure_experiment(tracking_uri, str(root / "mlartifacts"))
    log_path = root / "pipeline.log"
    t0 = time.time()
    # kfp.local indents print() while a task runs by swapping builtins.print; two ParallelFor
    # branches in threads restore each other's swap, so one indenting print can outlive the run
    print_before = builtins.print
    with _ThreadShare(parallel_tasks), _Tee(str(log_path), verbose):
        try:
            output = dag(tracking_uri)
        except RuntimeError as exc:  # kfp.local names the task that failed
            raise PipelineFailedError(f"pipeline failed after {time.time() - t0:.0f} s: {exc} "
                                      f"(full log with the task's traceback: {log_path})") from exc
        finally:
            builtins.print = print_before
    return output, {"seconds": round(time.time() - t0, 1), "tracking_uri": tracking_uri,
                    "log": str(log_path), "root": str(root)}


def run_pipeline(manifest_uri: str, **options) -> dict:
    """Run the whole DAG locally (options: the fields of :class:`PipelineOptions`); returns the
    results (also written to ``ROOT/results.json``). A failed task raises
    :class:`PipelineFailedError` naming it and the log file."""
    opts = PipelineOptions(manifest_uri=manifest_uri, **options)
    root = Path(opts.root).resolve()
    output, info = run_locally(root, opts.verbose, len(opts.languages),
                               lambda uri: _run_dag(opts, root, uri))
    res = collect_results(output, info["tracking_uri"])
    res.update(info)
    (root / "results.json").write_text(json.dumps(res, indent=2))
    return res


def add_pipeline_options(p: argparse.ArgumentParser) -> None:
    """Flags shared by `refseg pipeline run` and `refseg run-local` (same names as the DAG's
    parameters; old spellings kept as aliases)."""
    p.add_argument("--root", default="runs/local", help="folder for everything (default runs/local)")
    p.add_argument("--languages", default="zh,en", help="comma-separated (default zh,en)")
    p.add_argument("--steps", "--train-steps", dest="steps", type=int, default=0,
                   help="training steps; 0 = the config's default")
    p.add_argument("--no-crf", action="store_true", help="evaluate without DenseCRF")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def languages_of(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("Run the whole Kubeflow DAG (check translations, tokenize, then per language "
                     "train, evaluate, register) on this machine through kfp.local.")
    p.add_argument("--manifest", required=True, help="bilingual manifest (local path or s3://)")
    add_pipeline_options(p)
    p.add_argument("--config", "--preset", dest="config", default="small3",
                   help="model/training config: preset name or YAML file (default small3, the full "
                   "three-level network scaled for a CPU)")
    p.add_argument("--splits", "--split", dest="splits", default="",
                   help="evaluated splits, comma-separated (default: every split but train)")
    p.add_argument("--gate-split", default="", help="splits the promotion gate pools, joined "
                   "with '+' (default: every evaluated split but the selection split)")
    p.add_argument("--margin", type=float, default=0.0, help="promotion margin on the gate metric")
    p.add_argument("--floor", type=float, default=0.3,
                   help="a first model becomes champion only above this gate value (default 0.3)")
    p.add_argument("--max-fail-rate", type=float, default=0.05, help="translation gate threshold")
    p.add_argument("--image-root", dest="image_roots", action="append", default=[],
                   metavar="ROOT", help="a local folder or s3:// prefix the manifest's images must "
                   "lie in (repeatable; default: the manifest's folder and any s3:// object)")
    p.add_argument("--resume-root", default="", help="where the train steps keep their "
                   "resumable state (local folder or s3:// prefix; default: under --root)")
    p.add_argument("--zh-vectors", default="", help="pretrained Chinese word vectors (optional)")
    p.add_argument("--en-vectors", default="", help="pretrained English word vectors (optional)")


def run(args) -> int:
    res = run_pipeline(args.manifest, root=args.root, languages=languages_of(args.languages),
                       config=args.config, steps=args.steps, crf=not args.no_crf,
                       splits=args.splits, gate_split=args.gate_split, margin=args.margin,
                       floor=args.floor,
                       max_fail_rate=args.max_fail_rate, seed=args.seed,
                       image_roots=",".join(args.image_roots), resume_root=args.resume_root,
                       zh_vectors=args.zh_vectors, en_vectors=args.en_vectors,
                       verbose=args.verbose > 0)
    print(f"pipeline finished in {res['seconds']} s")
    print_results(res, args.root, res["tracking_uri"])
    return 0
