"""The ``refseg`` command line. Each command lives in its own module as
``configure_parser(parser)`` and ``run(args) -> int``; modules are imported only when their command
runs, so ``refseg --help`` stays fast (torch, MLflow and Great Expectations import slowly)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import traceback

# (command path, module, one-line help)
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("data", "synth"), "components.synth", "generate the synthetic bilingual referring dataset"),
    (("data", "import-refer"), "components.import_refer", "import a refer-layout dataset + Chinese translations"),
    (("data", "stats"), "components.stats", "Table 1 statistics of a manifest (lengths, counts)"),
    (("check-translations",), "components.check_translations", "validate EN/ZH pairs (Great Expectations)"),
    (("tokenize",), "components.tokenize", "jieba/English tokenization, vocabularies, word vectors"),
    (("train",), "components.train", "train the LE/LA/CLAF model (CPU, GPU, DDP) tracked in MLflow"),
    (("evaluate",), "components.evaluate", "IoU / Precision@X with and without DenseCRF, HTML report"),
    (("register",), "components.register", "register a run's model in MLflow and promote the champion"),
    (("predict",), "components.serve", "predict a mask for an image and an expression"),
    (("pipeline", "run"), "pipelines.local_run", "run the whole DAG locally with kfp.local"),
    (("pipeline", "compile"), "pipelines.compile", "compile the DAG to KFP IR YAML"),
    (("pipeline", "submit"), "pipelines.submit", "submit one run to a Kubeflow Pipelines server"),
    (("pipeline", "schedule"), "pipelines.schedule", "create a recurring (cron) run on a KFP server"),
    (("run-local",), "pipelines.run_local", "what `make run` does: the embedded default, end to end"),
    (("ablation",), "pipelines.ablation_run", "Table 4 as one pipeline run (kfp.local): every ablation row, the table"),
]


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def build_parser(load: tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """Build the parser; only the command named by ``load`` imports its module for its options."""
    parser = argparse.ArgumentParser(
        prog="refseg",
        description="bilingual-refseg: Chinese/English referring image segmentation, from data checks "
        "to a registered model. Every path may be local or s3://bucket/key.",
    )
    common = _common_options()
    groups: dict[str, argparse._SubParsersAction] = {}
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups[""] = top
    for path, module, help_ in COMMANDS:
        if not _available(module):
            continue
        sub = top
        for depth, word in enumerate(path[:-1]):
            key = " ".join(path[: depth + 1])
            if key not in groups:
                grp = sub.add_parser(word, help=f"{word} commands")
                groups[key] = grp.add_subparsers(dest=f"cmd_{depth}", metavar="SUBCOMMAND")
                groups[key].required = True
            sub = groups[key]
        p = sub.add_parser(path[-1], help=help_, description=help_, parents=[common],
                           conflict_handler="resolve")
        p.set_defaults(_module=module)
        if load == path:
            importlib.import_module(module).configure_parser(p)
    return parser


def _match(argv: list[str]) -> tuple[str, ...] | None:
    for path, module, _ in COMMANDS:
        if tuple(argv[: len(path)]) == path and _available(module):
            return path
    return None


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="more detail on the console (debug lines)")
    common.add_argument("--quiet", action="store_true",
                        help="warnings and errors only: no progress lines or bars")
    return common


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user's mistake (:class:`RefsegError`, or an operating-system error on a
    path the user named) prints one line (:func:`one_line`) and returns 1; any other exception is a bug and shows
    its traceback (return 2). ``REFSEG_DEBUG=1`` shows the traceback of user errors too."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(load=_match(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    from components import logs

    logs.configure(logs.level_for(getattr(args, "verbose", 0), getattr(args, "quiet", False)))
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _is_user_error(exc):
            traceback.print_exc()
            print(f"refseg: internal error ({type(exc).__name__}); this is a bug, please report "
                  "it with the traceback above", file=sys.stderr)
            return 2
        if os.environ.get("REFSEG_DEBUG"):
            raise
        print(f"refseg: error: {one_line(str(exc))}", file=sys.stderr)
        return 1


def one_line(message: str) -> str:
    """A message on one line: its non-blank lines stripped and joined with "; " (a YAML parser's
    error, for one, spans four lines)."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def _is_user_error(exc: BaseException) -> bool:
    from components.errors import RefsegError

    if isinstance(exc, RefsegError):
        return True
    # open() / os calls on a path the user named: the OS names the file
    return isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError,
                            NotADirectoryError)) and exc.filename is not None


if __name__ == "__main__":
    sys.exit(main())
