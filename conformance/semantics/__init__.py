"""The semantic profile: each CPU backend's library measured where implementations disagree.

`python -m conformance.semantics` runs the probes (`probes.py`) on each library as it ships
(`libraries.py`) and writes the table into this machine's run in results.json, beside the
conformance and speed sections; `nox -s conformance` runs it before the suite.
"""
