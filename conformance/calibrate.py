"""Entry point kept for `python -m conformance.calibrate`; the tool is `conformance/tools/calibrate.py`."""

import sys

from conformance.tools.calibrate import main

if __name__ == "__main__":
    sys.exit(main())
