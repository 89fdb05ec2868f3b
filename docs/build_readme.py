"""Assemble README.md from docs/readme/*.md (one file per topic, owned with its code).

    python docs/build_readme.py          # rewrite README.md
    python docs/build_readme.py --check  # exit 1 when README.md is out of date (a test runs this)
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["top", "pipeline", "data", "refer", "check_translations", "tokenize", "model", "train",
         "evaluate", "register", "infra", "testing"]


def build() -> str:
    parts = []
    for name in ORDER:
        path = HERE / "readme" / f"{name}.md"
        if not path.exists():
            raise SystemExit(f"missing README part {path}")
        parts.append(path.read_text(encoding="utf-8").strip() + "\n")
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    readme = HERE.parent / "README.md"
    text = build()
    if "--check" in argv:
        if readme.read_text(encoding="utf-8") != text:
            print("README.md is out of date: run python docs/build_readme.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
