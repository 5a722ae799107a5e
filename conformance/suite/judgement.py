"""Under which reading of the spec a check judges: the backend's declared conventions, or a hypothesis.

A check computes its references (`conformance.suite.reference`) and compares
(`conformance.suite.tolerance`) without knowing who asked. The engine runs each check under
the backend's declared conventions (`spec.conventions`); the diagnosis (`conformance.findings`)
re-runs a failed example under a hypothesis about its cause (the key padding mask ignored or
inverted, a precision one dtype lower, a row convention) and, when the example then passes,
names that cause. Both set the judgement here, for the duration of one check call.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from spec import conventions as conv

#: The next lower precision, for "passes at the next lower dtype's tolerance".
LOWER = {"float64": "float32", "float32": "float16", "float16": "bfloat16"}
MASK_HYPOTHESES = ("ignored", "inverted")


@dataclass(frozen=True)
class Judgement:
    """conventions: name -> value (`spec.conventions.MENU`); precision_lowered: judge dtype D at
    the next lower dtype's tolerance; padding_mask: None (as given), "ignored" or "inverted"."""

    conventions: Mapping[str, str] = field(default_factory=dict)
    precision_lowered: bool = False
    padding_mask: str | None = None

    def plain_dtype(self, dtype: str) -> str:
        """The dtype the plain reference runs in (and whose floor applies) when D is under test."""
        d = conv.compute_dtype(self.conventions, dtype)
        return LOWER.get(d, d) if self.precision_lowered else d

    def mask(self, key_padding_mask: np.ndarray | None) -> np.ndarray | None:
        """The padding mask as the hypothesis reads it."""
        if key_padding_mask is None or self.padding_mask is None:
            return key_padding_mask
        return None if self.padding_mask == "ignored" else ~np.asarray(key_padding_mask, dtype=bool)

    def governed(self, config: Any, B: int, T: int, key_padding_mask: np.ndarray | None) -> np.ndarray:
        """[B, T] rows a row convention decides: property checks leave them out of the comparison."""
        return conv.governed_rows(self.conventions, config, B, T, key_padding_mask)

    @property
    def is_spec(self) -> bool:
        return not conv.departures(self.conventions) and not self.precision_lowered and self.padding_mask is None


_ACTIVE: contextvars.ContextVar[Judgement] = contextvars.ContextVar("judgement", default=Judgement())


def active() -> Judgement:
    """The judgement the running check is under (the plain spec when nobody set one)."""
    return _ACTIVE.get()


@contextmanager
def judged_under(judgement: Judgement) -> Iterator[Judgement]:
    token = _ACTIVE.set(judgement)
    try:
        yield judgement
    finally:
        _ACTIVE.reset(token)


def declared(backend: Any) -> Judgement:
    """The judgement of a backend's declared conventions (`Capabilities.conventions`)."""
    return Judgement(dict(getattr(backend.capabilities, "conventions", None) or {}))
