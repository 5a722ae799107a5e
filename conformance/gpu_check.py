"""Entry point kept for `python -m conformance.gpu_check`; the tool is `conformance/tools/gpu_check.py`."""

import sys

from conformance.tools.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
