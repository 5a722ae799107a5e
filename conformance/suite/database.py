"""One Hypothesis example database per (check, backend, dtype), through public API only.

Every check runs the same test body, so Hypothesis would file the failing examples of all
(check, backend, dtype) combinations under one key and replay numpy's failures on torch. This
wrapper keeps one key space per combination by prefixing its keys; it is an ordinary
`ExampleDatabase`, handed to Hypothesis through `settings(database=...)`.
"""

from __future__ import annotations

from collections.abc import Iterable

from hypothesis.database import ExampleDatabase


class KeyedDatabase(ExampleDatabase):
    """`inner`, with every key prefixed by `prefix` (the combination's name)."""

    def __init__(self, inner: ExampleDatabase, prefix: str):
        super().__init__()
        self.inner = inner
        self.prefix = prefix.encode("utf-8", "surrogatepass") + b"\0"

    def save(self, key: bytes, value: bytes) -> None:
        self.inner.save(self.prefix + key, value)

    def fetch(self, key: bytes) -> Iterable[bytes]:
        yield from self.inner.fetch(self.prefix + key)

    def delete(self, key: bytes, value: bytes) -> None:
        self.inner.delete(self.prefix + key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        self.inner.move(self.prefix + src, self.prefix + dest, value)


def for_combination(check: str, backend: str, dtype: str) -> ExampleDatabase | None:
    """The current profile's database, keyed by the combination (None when the profile has none)."""
    from hypothesis import settings

    inner = settings.default.database
    return None if inner is None else KeyedDatabase(inner, f"{check}|{backend}|{dtype}")
