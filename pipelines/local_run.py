"""`refseg pipeline run`: the whole DAG on this machine through ``kfp.local`` (SubprocessRunner,
use_venv=False): the very same pipeline that runs on a cluster, task by task, in this environment.

Everything goes under one folder (default ``runs/local/``): the pipeline's artifacts
(``pipeline/``), the MLflow store (``mlflow.db`` and ``mlartifacts/``) and the full log
(``pipeline.log``); the console shows one line per task and the training progress."""

import argparse
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

EXPERIMENT = "bilingual-refseg"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SHOW = re.compile(
    r"Executing task|finished with status|Pipeline .* finished|^\s*\[(train|evaluate|register|"
    r"tokenize|check)\]|Error|Traceback|GateError"
)


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


def _latest_run_dir(pipeline_root: Path, before: set) -> Path | None:
    runs = [p for p in pipeline_root.iterdir() if p.is_dir() and p not in before]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def collect_results(run_dir: Path, tracking_uri: str, languages: list[str]) -> dict:
    """Read back what the run produced: reports, metrics per language, registry state."""
    import mlflow

    out: dict = {"run_dir": str(run_dir), "languages": {}}
    check = run_dir / "check-translations-op"
    out["validation_report"] = str(check / "report") if (check / "report").exists() else None
    summary = check / "summary"
    if summary.exists():
        out["check_summary"] = json.loads(summary.read_text())
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    for i, lang in enumerate(languages):
        it = run_dir / f"for-loop-1-iteration-{i}"
        res: dict = {"evaluation_report": None, "metrics": {}}
        ev = it / "evaluate-op"
        if (ev / "executor_output.json").exists():
            eo = json.loads((ev / "executor_output.json").read_text())
            for art in eo.get("artifacts", {}).get("metrics", {}).get("artifacts", []):
                res["metrics"] = art.get("metadata", {})
        if (ev / "report").exists():
            res["evaluation_report"] = str(ev / "report")
        name = f"bilingual-refseg-{lang}"
        try:
            versions = client.search_model_versions(f"name='{name}'")
            res["versions"] = sorted(int(v.version) for v in versions)
            try:
                champ = client.get_model_version_by_alias(name, "champion")
                res["champion"] = int(champ.version)
            except Exception:
                res["champion"] = None
        except Exception:
            res["versions"], res["champion"] = [], None
        out["languages"][lang] = res
    return out


def print_results(res: dict, root: str, tracking_uri: str, split: str = "val") -> None:
    print("\nResults per language (" + split + " split)")
    head = f"{'lang':<5} {'overall IoU':>11} {'+CRF':>7} {'mean IoU':>9} {'P@0.5':>7} " \
           f"{'shuffled':>9}  {'versions':<10} champion"
    print(head)
    print("-" * len(head))
    for lang, r in res["languages"].items():
        m = r["metrics"]

        def f(key, m=m):
            v = m.get(f"{split}_{key}")
            return f"{v:.3f}" if isinstance(v, (int, float)) else "-"

        print(f"{lang:<5} {f('overall_iou'):>11} {f('overall_iou_crf'):>7} {f('mean_iou'):>9} "
              f"{f('prec_50'):>7} {f('overall_iou_shuffled'):>9}  "
              f"{','.join(map(str, r.get('versions', []))):<10} "
              f"{'v' + str(r['champion']) if r.get('champion') else '-'}")
    print(f"\nvalidation report : {res.get('validation_report')}")
    for lang, r in res["languages"].items():
        print(f"evaluation report ({lang}): {r.get('evaluation_report')}")
    print(f"everything        : {os.path.abspath(root)}")
    print(f"MLflow UI         : mlflow ui --backend-store-uri {tracking_uri} --port 5000")


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


def run_pipeline(manifest_uri: str, root: str = "runs/local", languages=("zh", "en"),
                 preset: str = "small", train_steps: int = 0, crf: bool = True,
                 eval_split: str = "val", margin: float = 0.0, floor: float = 0.3,
                 max_fail_rate: float = 0.05,
                 seed: int = 0, zh_vectors: str = "", en_vectors: str = "",
                 verbose: bool = False) -> dict:
    from kfp import local

    from pipelines.pipeline import refseg_pipeline

    root_p = Path(root).resolve()
    root_p.mkdir(parents=True, exist_ok=True)
    tracking_uri = mlflow_uri_for(str(root_p))
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    saved_threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    _share_cores(len(languages))
    ensure_experiment(tracking_uri, str(root_p / "mlartifacts"))
    pipeline_root = root_p / "pipeline"
    pipeline_root.mkdir(exist_ok=True)
    before = set(pipeline_root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               workspace_root=str(root_p / "workspace"))
    log = root_p / "pipeline.log"
    t0 = time.time()
    error = None
    with _Tee(str(log), verbose):
        try:
            refseg_pipeline(
                manifest_uri=manifest_uri, languages=list(languages), preset=preset,
                train_steps=train_steps, crf=crf, eval_split=eval_split, promotion_margin=margin,
                promotion_floor=floor,
                max_fail_rate=max_fail_rate, mlflow_uri=tracking_uri, zh_vectors=zh_vectors,
                en_vectors=en_vectors, seed=seed,
            )
        except Exception as exc:  # kfp raises RuntimeError naming the failed task
            error = exc
        finally:  # the thread share is for the task processes only, not for the caller
            for k, v in saved_threads.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    seconds = time.time() - t0
    if error is not None:
        raise RuntimeError(f"pipeline failed after {seconds:.0f} s: {error} (full log: {log})")
    run_dir = _latest_run_dir(pipeline_root, before)
    res = collect_results(run_dir, tracking_uri, list(languages))
    res.update({"seconds": round(seconds, 1), "tracking_uri": tracking_uri, "log": str(log),
                "root": str(root_p)})
    (root_p / "results.json").write_text(json.dumps(res, indent=2))
    return res


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="bilingual manifest (local path or s3://)")
    p.add_argument("--root", default="runs/local", help="folder for everything (default runs/local)")
    p.add_argument("--languages", default="zh,en", help="comma-separated (default zh,en)")
    p.add_argument("--preset", default="small", help="model preset or YAML (default small)")
    p.add_argument("--train-steps", type=int, default=0, help="0 = the preset's default")
    p.add_argument("--no-crf", action="store_true", help="evaluate without DenseCRF")
    p.add_argument("--split", default="val", help="evaluation split (default val)")
    p.add_argument("--margin", type=float, default=0.0, help="promotion margin on the gate metric")
    p.add_argument("--floor", type=float, default=0.3,
                   help="a first model becomes champion only above this gate value (default 0.3)")
    p.add_argument("--max-fail-rate", type=float, default=0.05, help="translation gate threshold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zh-vectors", default="", help="pretrained Chinese word vectors (optional)")
    p.add_argument("--en-vectors", default="", help="pretrained English word vectors (optional)")
    p.add_argument("--verbose", action="store_true", help="show every log line of every task")


def run(args) -> int:
    langs = [x.strip() for x in args.languages.split(",") if x.strip()]
    bad = [x for x in langs if x not in ("zh", "en")]
    if bad:
        raise ValueError(f"unknown language(s) {bad}; use zh and/or en")
    res = run_pipeline(args.manifest, root=args.root, languages=langs, preset=args.preset,
                       train_steps=args.train_steps, crf=not args.no_crf, eval_split=args.split,
                       margin=args.margin, floor=args.floor, max_fail_rate=args.max_fail_rate, seed=args.seed,
                       zh_vectors=args.zh_vectors, en_vectors=args.en_vectors, verbose=args.verbose)
    print(f"pipeline finished in {res['seconds']} s")
    print_results(res, args.root, res["tracking_uri"], args.split)
    return 0
