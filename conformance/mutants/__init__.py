"""Deliberately broken backends: the suite's own test.

`PlainBackend` (base.py) is a simple, correct NumPy backend; every mutant (catalogue.py) is a
subclass with one planted bug of a class real attention code has, and `python -m conformance.mutants`
(kill.py) reports which check kills each, per dtype. Backends that misbehave rather than
compute wrongly (raise, hang, crash, return junk) live in misbehaving.py, for the suite's
robustness tests.
"""
