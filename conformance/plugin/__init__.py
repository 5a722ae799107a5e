"""The pytest plumbing: `conftest.py` adds the options and parametrises `test_conformance.py`'s
one test by the planned (backend, dtype, check) keys; pytest-xdist spreads them over workers."""
