"""The documentation: README.md stays short and opens with the two commands, every relative link
and every module path the docs cite exists, and nothing in the repository points at a document
outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 250
# Pages the README must link to (one per area, plus the contributor pages).
PAGES = ("pipeline", "data-and-checks", "tokenize", "model", "training", "evaluation",
         "registry-and-serving", "infrastructure", "benchmarks", "testing", "method",
         "architecture", "reliability")
# Documents that are not part of the repository, spelled in pieces so that this file does not
# name them itself.
OUTSIDE = [re.escape(name + ".md") for name in ("METHOD", "ARCHITECTURE", "HELPERS", "CONTRACTS")]
OUTSIDE += [r"\.\./shared\b", r"/work" + r"/shared\b", r"000_" + r"b0c339755b56582e"]
ROOTS = ("model", "components", "pipelines", "configs", "tests", "benchmarks", "infra")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(ROOTS) + r")/[\w./-]*[\w/])")
FILE_SUFFIXES = {"md", "py", "yaml", "json", "txt", "tsv"}
DOTTED = re.compile(r"(?<![\w./-])((?:model|components|pipelines|configs|benchmarks)(?:\.\w+)+)")


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(path: Path) -> str:
    """The file without its fenced code blocks (links and headings there are not markdown)."""
    out, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        out.append("" if fenced else line)
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def repository_text_files() -> list[Path]:
    """Tracked and new (not ignored) files that exist and read as UTF-8 text."""
    r = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       cwd=ROOT, capture_output=True, check=True)
    files = []
    for name in sorted(set(r.stdout.decode("utf-8").split("\0")) - {""}):
        path = ROOT / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        files.append(path)
    return files


# ------------------------------------------------------------------------------------------------
def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES})"


def test_readme_opens_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("```"))
    assert start < 5, f"the first code block starts at line {start + 1}: the commands come first"
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    commands = [line.split("#")[0].strip() for line in lines[start + 1:end]]
    commands = [c for c in commands if c]
    assert commands[:2] == ["make run", "make test"], commands


def test_readme_links_every_docs_page():
    text = prose(README)
    targets = {m.group(1).split("#")[0] for m in LINK.finditer(text)}
    missing = [p for p in PAGES if f"docs/{p}.md" not in targets]
    assert not missing, f"README.md does not link to docs pages {missing}"
    pages = {p.stem for p in DOCS.glob("*.md")}
    assert set(PAGES) <= pages, f"docs pages missing: {sorted(set(PAGES) - pages)}"
    unlinked = sorted(pages - set(PAGES))
    assert not unlinked, f"docs pages not linked from README.md: {unlinked}"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path):
    bad = []
    for m in LINK.finditer(prose(path)):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if ROOT not in dest.parents and dest != ROOT:
            bad.append(f"{target}: outside the repository")
            continue
        if not dest.exists():
            bad.append(f"{target}: no such file")
            continue
        if fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            bad.append(f"{target}: no heading #{fragment} in {dest.relative_to(ROOT)}")
    assert not bad, f"{path.relative_to(ROOT)}: " + "; ".join(bad)


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_paths_exist(path: Path):
    text = path.read_text(encoding="utf-8")
    bad = []
    for m in PATH.finditer(text):
        cited = m.group(1)
        if text[m.end():m.end() + 1] in "<{*":  # a pattern such as configs/<name>.yaml
            continue
        if not (ROOT / cited).exists():
            bad.append(cited)
    assert not bad, f"{path.relative_to(ROOT)} cites paths that do not exist: {sorted(set(bad))}"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_modules_exist(path: Path):
    """``components.text.tokenizer.load_tokenizer``: the module exists and defines (or imports)
    the name that follows it."""
    bad = []
    for m in DOTTED.finditer(path.read_text(encoding="utf-8")):
        parts = m.group(1).split(".")
        if parts[-1] in FILE_SUFFIXES:  # a file name such as model.md
            continue
        where = ROOT / parts[0]
        rest = parts[1:]
        while rest and ((where / rest[0]).is_dir() or (where / f"{rest[0]}.py").is_file()):
            where = where / rest[0]
            rest = rest[1:]
        source = where / "__init__.py" if where.is_dir() else where.with_suffix(".py")
        if not source.is_file():
            bad.append(m.group(1))
        elif rest and not re.search(rf"\b{re.escape(rest[0])}\b", source.read_text("utf-8")):
            bad.append(m.group(1))
    assert not bad, f"{path.relative_to(ROOT)} cites modules or names that do not exist: {sorted(set(bad))}"


def test_no_file_refers_to_documents_outside_the_repository():
    pattern = re.compile("|".join(OUTSIDE))
    hits = []
    for path in repository_text_files():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}")
    assert not hits, "references to documents outside the repository: " + ", ".join(hits)


def test_cited_docs_pages_exist():
    """Any file that names a page ``docs/<name>.md`` names one that exists."""
    pattern = re.compile(r"(?<![\w./-])docs/[\w./-]*\.md\b")
    hits = []
    for path in repository_text_files():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            hits += [f"{path.relative_to(ROOT)}:{n} {m.group(0)}" for m in pattern.finditer(line)
                     if not (ROOT / m.group(0)).is_file()]
    assert not hits, "files name docs pages that do not exist: " + ", ".join(hits)
