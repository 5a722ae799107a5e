"""`python -m conformance <command> [options]`: the one command surface.

Each command is a module's `main(argv) -> int`; with no command (or options first) the
command is `run`. The older entry points (`python -m conformance.speed`, `python -m reports`,
...) stay as thin aliases of the same functions, so earlier reports' repro lines still run.
"""

from __future__ import annotations

import importlib
import os
import sys

from conformance import COMMAND, usage

#: command -> (module, what it does); every module defines main(argv) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("conformance.cli", "check backends against the spec and write results.json (the default)"),
    "bench": ("conformance.speed.cli", "time conforming backends side by side (forward, --backward, --decode)"),
    "semantics": ("conformance.semantics.__main__", "probe what each backend's library does where libraries differ"),
    "findings": ("conformance.findings.__main__", "group a run's failures into findings by cause (again)"),
    "mutants": ("conformance.mutants.__main__", "run the suite on deliberately broken backends: the kill table"),
    "repro": ("conformance.tools.repro", "replay a saved failure (a failures/*.npz bundle)"),
    "report": ("reports.cli", "render results.json as report.md and index.html"),
    "calibrate": ("conformance.tools.calibrate", "measure the tolerance model on the correct backends"),
    "time-shares": ("conformance.tools.time_shares", "where a run's workers spent their time, by share and dtype"),
    "sweep": ("conformance.tools.sweep", "run the default profile on many seeds; count false failures"),
    "gpu-check": ("conformance.tools.gpu_check", "on a GPU machine: conformance and speed of the GPU backends"),
}
PROG = COMMAND  # "python -m conformance", or "mha-conformance" installed


def overview() -> str:
    w = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} [COMMAND] [options]   (no command: run)", "", "commands:"]
    lines += [f"  {name:{w}s}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", f"'{PROG} COMMAND --help' shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("help", "--commands"):
        print(overview())
        return 0
    if argv and not argv[0].startswith("-"):
        name, rest = argv[0], argv[1:]
        if name not in COMMANDS:
            return usage.report(PROG, usage.UsageError(f"unknown command {name!r}; valid: {', '.join(COMMANDS)} "
                                                       f"(or options alone, which run the suite)"))
    else:
        name, rest = "run", argv
        if any(a in ("-h", "--help") for a in argv):
            print(overview() + "\n")
    usage.INVOKED_AS = f"{PROG} {name}"
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except SystemExit as e:  # argparse's --help (0) and any tool that exits itself
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)


def console() -> int:
    """The installed `mha-conformance` script: `main`, with the current directory first on
    sys.path as `python -m` has it, so a `mypkg.attn:Backend` beside the user is importable
    (pytest-xdist's workers inherit this sys.path)."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    return main()
