"""The CLI's contract: a user's mistake is one line and exit 1; a bug shows its traceback and
exits 2; -v/--quiet set what the step loggers print."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines import cli

PROBE = (("probe",), "tests.cli_probe", "test command")


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, PROBE])


def test_user_error_is_one_line_and_exit_1(probe, capsys):
    assert cli.main(["probe", "--fail", "user"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "refseg: error: record 'r1': the text is empty"
    assert not any("Traceback" in line for line in err)


def test_missing_file_named_by_the_os_is_a_user_error(probe, capsys):
    assert cli.main(["probe", "--fail", "missing-file"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("refseg: error:") and "/nonexistent/refseg-probe.txt" in last


@pytest.mark.parametrize("kind,exc", [("bug", "ZeroDivisionError"), ("value-bug", "ValueError")])
def test_a_bug_shows_its_traceback_and_exit_2(probe, capsys, kind, exc):
    assert cli.main(["probe", "--fail", kind]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert f"{exc}:" in err and "this is a bug" in err


def test_verbosity_flags_set_the_step_loggers(probe, capsys):
    assert cli.main(["probe"]) == 0
    err = capsys.readouterr().err
    assert "[probe zh] info line" in err and "debug line" not in err
    assert "[probe zh] warning: warning line" in err
    assert cli.main(["probe", "-v"]) == 0
    assert "[probe zh] debug: debug line" in capsys.readouterr().err
    assert cli.main(["probe", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "info line" not in err and "warning line" in err


def test_help_is_fast_and_lists_every_command():
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipelines.cli", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for path, _, _ in cli.COMMANDS:
        assert path[0] in r.stdout
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    assert not {"torch", "mlflow", "great_expectations", "kfp"} & imported
