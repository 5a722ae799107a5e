"""Entry point: `python -m conformance.speed [options]` (see conformance/speed/cli.py)."""

import sys

from conformance.speed.cli import main

sys.exit(main())
