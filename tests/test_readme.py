"""README.md is built from docs/readme/*.md; a stale README fails here."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_assembled_from_its_parts():
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "build_readme.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_readme_opens_with_the_two_commands():
    head = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:6]
    assert "make run" in head[3] and "make test" in head[4], head
    assert "@@" not in (ROOT / "README.md").read_text(encoding="utf-8")
