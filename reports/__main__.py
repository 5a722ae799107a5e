"""`python -m reports`: render results.json as report.md and index.html (see reports.cli)."""

from reports.cli import main

raise SystemExit(main())
