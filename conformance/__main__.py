"""`python -m conformance [COMMAND] [options]`: see conformance/commands.py (no command: run)."""

import sys

from conformance.commands import main

sys.exit(main())
