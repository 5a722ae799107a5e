"""Findings: a run's failed records grouped by cause, diagnosed by probes through the backend contract.

`probes.py` measures what a backend does where libraries legitimately differ (also the semantic
profile's rows for any backend); `diagnose.py` groups failures into findings; `python -m
conformance.findings --out DIR` adds them to DIR/results.json (the suite runs it after a run
with failures, in a separate process, so a backend that crashes here costs only the grouping).
"""
