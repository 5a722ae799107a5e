"""The one command surface: `python -m conformance <command>`, every command's bad input one line, exit 2,
and the older entry points still working as aliases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conformance.commands import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
#: semantics accepts and ignores other commands' options by design (nox passes the suite's to it)
STRICT = [c for c in COMMANDS if c != "semantics"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", STRICT)
def test_every_command_reports_a_bad_flag_in_one_line_with_exit_2(command):
    p = _run("-m", "conformance", command, "--no-such-flag")
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"python -m conformance {command}: error:"), lines


def test_an_unknown_command_names_the_valid_ones():
    p = _run("-m", "conformance", "benchmark")
    assert p.returncode == 2 and "unknown command 'benchmark'; valid: run, bench" in p.stderr


@pytest.mark.parametrize("flags", [["-n", "0"], ["--workers", "many"], ["-j", "0"]])
def test_workers_is_one_flag_with_the_older_spellings_kept(flags):
    p = _run("-m", "conformance", "mutants", *flags)
    assert p.returncode == 2 and "--workers must be" in p.stderr, p.stderr


def test_options_alone_run_the_suite_and_help_lists_the_commands():
    p = _run("-m", "conformance", "--list-checks")
    assert p.returncode == 0 and "matches_spec" in p.stdout
    h = _run("-m", "conformance", "--help")
    assert h.returncode == 0 and all(f"  {c} " in h.stdout for c in COMMANDS)


@pytest.mark.parametrize("module", ["conformance.repro", "conformance.speed", "conformance.mutants", "reports",
                                    "conformance.sweep", "conformance.calibrate", "conformance.gpu_check"])
def test_older_entry_points_still_answer(module):
    p = _run("-m", module, "--no-such-flag")
    assert p.returncode == 2 and len((p.stdout + p.stderr).strip().splitlines()) == 1, (p.stdout, p.stderr)
