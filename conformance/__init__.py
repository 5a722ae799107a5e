"""The conformance suite. Run from a checkout as `python -m conformance`, or installed (setup.py
puts it under `mha_conformance`) as `mha-conformance`; the constants below say which."""

from pathlib import Path

#: This package's import name: "conformance" from a checkout, "mha_conformance.conformance" installed.
MODULE = __name__
#: Installed as mha_conformance: the build prefixes every import of ours with it.
INSTALLED = "." in __name__
#: What a user types to run the suite: in usage lines, and in repro lines that must run as printed.
COMMAND = "mha-conformance" if INSTALLED else "python -m conformance"
#: The sys.path entry that holds our top-level package: the checkout root, or site-packages.
IMPORT_ROOT = Path(__file__).resolve().parents[__name__.count(".") + 1]
