"""Entry point kept for `python -m conformance.repro`; the tool is `conformance/tools/repro.py`."""

import sys

from conformance.tools.repro import main

if __name__ == "__main__":
    sys.exit(main())
