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


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error raises UsageError (one line) instead of printing the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def report(prog: str, e: BaseException) -> int:
    """Print a usage error as one line on stderr; returns the exit status 2."""
    print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return EXIT_USAGE
