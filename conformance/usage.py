"""The one kind of user mistake every command reports the same way: one line, exit status 2.

`UsageError` is raised for anything a user typed or pointed at that cannot be used (a bad
option value, an unreadable file, an output directory in use); `OneLineParser` turns
argparse's own errors (unknown option, missing value) into it instead of a usage block.
Every entry point (`python -m conformance`, `reports`, `conformance.repro`,
`conformance.mutants`) catches it, prints `error: <message>` on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2


class UsageError(ValueError):
    """A mistake on the command line or in a file the user named; the message is one line."""


#: Set by `python -m conformance <command>` so every parser names the command the user typed.
INVOKED_AS: str | None = None


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error raises UsageError (one line) instead of printing the usage block.

    Every command builds its parser from this class and the shared option builders below, so
    the same thing has the same flag everywhere."""

    def __init__(self, *args, **kwargs) -> None:
        if INVOKED_AS and "prog" in kwargs:
            kwargs["prog"] = INVOKED_AS
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def report(prog: str, e: BaseException) -> int:
    """Print a usage error as one line on stderr; returns the exit status 2."""
    print(f"{INVOKED_AS or prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return EXIT_USAGE


# -- shared option builders: one flag for one thing, in every command -------------------------
def add_workers(p: argparse.ArgumentParser, default: str | int, what: str = "worker processes",
                aliases: tuple[str, ...] = ()) -> None:
    """-n/--workers N: how many processes run in parallel (older spellings kept as hidden aliases)."""
    p.add_argument("-n", "--workers", dest="workers", default=default, help=f"{what} (default {default})")
    for alias in aliases:  # e.g. -j/--processes from earlier versions: same destination, not shown
        p.add_argument(alias, dest="workers", help=argparse.SUPPRESS)


def add_seed(p: argparse.ArgumentParser, default: int | None, repeatable: bool = False) -> None:
    if repeatable:
        p.add_argument("--seed", type=int, action="append", default=[], help="Hypothesis seed (repeatable)")
    else:
        p.add_argument("--seed", type=int, default=default,
                       help=f"Hypothesis seed (default {'random, recorded' if default is None else default})")


def add_out(p: argparse.ArgumentParser, default: str | None, what: str = "run directory") -> None:
    p.add_argument("--out", default=default, help=f"{what} (default {default})")


def workers_count(value: object, flag: str = "--workers") -> int:
    """An integer of at least 1 from --workers; UsageError naming the bad value otherwise."""
    try:
        n = int(str(value))
    except ValueError:
        raise UsageError(f"{flag} must be a whole number of processes, got {value!r}") from None
    if n < 1:
        raise UsageError(f"{flag} must be at least 1, got {n}")
    return n
