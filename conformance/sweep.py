"""Entry point kept for `python -m conformance.sweep`; the tool is `conformance/tools/sweep.py`."""

import sys

from conformance.tools.sweep import main

if __name__ == "__main__":
    sys.exit(main())
