"""The semantic profile: what each backend does where attention implementations disagree.

`python -m conformance.semantics` measures each backend of the run twice where it can: its
library as it ships (`probes.py` on `libraries.py`: "via library", built-ins only) and the
backend through its contract (`contract.py`: "via contract", every backend, plug-ins included);
`rows.py` builds the rows. The table goes into this machine's run in results.json, beside the
conformance and speed sections; `nox -s conformance` runs it before the suite.
"""
