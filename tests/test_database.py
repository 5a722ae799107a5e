"""The per-combination example database: keys kept apart, public Hypothesis API only."""

from __future__ import annotations

from hypothesis.database import InMemoryExampleDatabase

from conformance.suite.database import KeyedDatabase


def test_combinations_do_not_share_examples():
    inner = InMemoryExampleDatabase()
    a, b = KeyedDatabase(inner, "matches_spec|numpy|float32"), KeyedDatabase(inner, "matches_spec|torch|float32")
    a.save(b"k", b"numpy's failure")
    assert list(a.fetch(b"k")) == [b"numpy's failure"]
    assert list(b.fetch(b"k")) == []
    a.move(b"k", b"k2", b"numpy's failure")
    assert list(a.fetch(b"k")) == [] and list(a.fetch(b"k2")) == [b"numpy's failure"]
    a.delete(b"k2", b"numpy's failure")
    assert list(a.fetch(b"k2")) == []


class _Recording(InMemoryExampleDatabase):
    def __init__(self):
        super().__init__()
        self.saved_keys: list[bytes] = []

    def save(self, key: bytes, value: bytes) -> None:
        self.saved_keys.append(key)
        super().save(key, value)


def test_a_failing_example_is_saved_under_its_own_combination():
    from hypothesis import settings

    from conformance.suite import profiles
    from conformance.suite.checks import get
    from conformance.suite.engine import run_check
    from conformance.mutants.catalogue import NoScale

    inner = _Recording()
    profiles.register()
    settings.register_profile("test-database", parent=settings.get_profile("quick"), database=inner)
    settings.load_profile("test-database")
    try:
        backend = NoScale()
        # a drawn (not explicit) example, and no seed: either would turn saving off
        assert run_check(get("weights_match_spec"), backend, "float32").outcome == "failed"
    finally:
        settings.load_profile("default")
    prefix = f"weights_match_spec|{backend.name}|float32".encode() + b"\0"
    assert inner.saved_keys, "the failing example was not saved"
    assert all(k.startswith(prefix) for k in inner.saved_keys), inner.saved_keys[:3]
