"""Run every benchmark (`make bench`) one after another and list where the results went.

Each ``benchmarks/bench_<name>.py`` writes ``benchmarks/results/<name>.json``; docs/benchmarks.md
quotes those files. ``--only tokenize,model`` runs a subset. Benchmarks measure; they assert nothing."""

import argparse
import importlib
import pkgutil
import sys
import time

import benchmarks


def available() -> list[str]:
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(benchmarks.__path__)
                  if m.name.startswith("bench_"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(available())}")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(available())}",
              file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"=== bench_{name}", flush=True)
        t0 = time.time()
        mod = importlib.import_module(f"benchmarks.bench_{name}")
        rc = mod.main([])
        print(f"=== bench_{name}: exit {rc} in {time.time() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
