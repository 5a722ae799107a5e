"""Backends that misbehave rather than compute wrongly: the suite must survive and name each.

Each class is forward-only (no step methods) and otherwise correct: it computes through
`PlainBackend` and then does one bad thing. `tests/test_robustness.py` runs them all in one
`python -m conformance` run next to the NumPy backend and checks that every misbehaviour is
recorded against the right backend, with a reason that names it, and that the NumPy backend's
results are unaffected. `MISBEHAVING` lists them with the words their failure reason contains.
"""

from __future__ import annotations

import ctypes
import os
import time
from typing import Any

import numpy as np

from conformance.mutants.base import PlainBackend
from impls.base import Backend, Capabilities
from spec.config import AttentionConfig, numpy_dtype
from spec.params import Params


class ForwardOnly(Backend):
    """Correct forward (through PlainBackend), no step methods; subclasses spoil `result`."""

    name = "misbehaving-none"
    capabilities = Capabilities(dtypes=("float64", "float32", "float16"), device="cpu",
                                key_padding_mask=True, qkv_bias=True, dropout="replay")

    def __init__(self) -> None:
        self._plain = PlainBackend()

    def from_numpy(self, a: np.ndarray, dtype: str | None = None) -> np.ndarray:
        return np.array(a, dtype=numpy_dtype(dtype) if dtype else a.dtype, copy=True)

    def to_numpy(self, a: Any) -> Any:
        return a  # NumPy arrays are native; anything else is passed on for the suite to judge

    def prepare(self, params: Params, dtype: str) -> Params:
        return self._plain.prepare(params, dtype)

    def forward(self, x: np.ndarray, weights: Params, config: AttentionConfig, *,
                key_padding_mask: np.ndarray | None = None, dropout_mask: np.ndarray | None = None,
                training: bool = False) -> Any:
        out = self._plain.forward(x, weights, config, key_padding_mask=key_padding_mask,
                                  dropout_mask=dropout_mask, training=training)
        return self.result(out, x)

    def result(self, out: np.ndarray, x: np.ndarray) -> Any:
        return out


class Raises(ForwardOnly):
    """forward raises an exception (a RuntimeError from inside the kernel)."""

    name = "misbehaving-raises"

    def result(self, out, x):
        raise RuntimeError("kernel launch failed (deliberately)")


class WrongShape(ForwardOnly):
    """forward returns the right values flattened to [B*T, d_out] instead of [B, T, d_out]."""

    name = "misbehaving-wrong-shape"

    def result(self, out, x):
        B, T, d_out = out.shape
        return out.reshape(B * T, d_out)  # (B*T, d_out)


class WrongDtype(ForwardOnly):
    """forward returns float64 whatever the input dtype (float32 in, float64 out)."""

    name = "misbehaving-wrong-dtype"

    def result(self, out, x):
        return out.astype(np.float64)


class ReturnsList(ForwardOnly):
    """forward returns a nested Python list instead of an array."""

    name = "misbehaving-returns-list"

    def result(self, out, x):
        return out.tolist()


class ReturnsNone(ForwardOnly):
    """forward returns None (a forgotten return statement)."""

    name = "misbehaving-returns-none"

    def result(self, out, x):
        return None


class NaNOutput(ForwardOnly):
    """forward returns NaN in one output element."""

    name = "misbehaving-nan"

    def result(self, out, x):
        out = out.copy()
        out.flat[out.size // 2] = np.nan
        return out


class InfOutput(ForwardOnly):
    """forward returns +inf in one output element."""

    name = "misbehaving-inf"

    def result(self, out, x):
        out = out.copy()
        out.flat[0] = np.inf
        return out


class MutatesInput(ForwardOnly):
    """forward modifies its input x in place (adds 1 to it after computing the output)."""

    name = "misbehaving-mutates-input"

    def result(self, out, x):
        x += 1
        return out


class Hangs(ForwardOnly):
    """forward never returns (sleeps for a day): the per-example time limit must end it."""

    name = "misbehaving-hangs"

    def result(self, out, x):
        time.sleep(86400)
        return out


class Exits(ForwardOnly):
    """forward ends the whole process with os._exit(1): the run must record it and go on."""

    name = "misbehaving-exits"

    def result(self, out, x):
        os._exit(1)


class Segfaults(ForwardOnly):
    """forward segfaults (reads address 0 through ctypes), as a buggy C extension would."""

    name = "misbehaving-segfaults"

    def result(self, out, x):
        ctypes.string_at(0)
        return out


class NonDeterministic(ForwardOnly):
    """forward adds one-ulp noise at random places: not bit-identical on repeat, though it declares so."""

    name = "misbehaving-nondeterministic"

    def result(self, out, x):
        noisy = np.random.default_rng().random(out.shape) < 0.5
        return np.where(noisy, np.nextafter(out, np.inf), out).astype(out.dtype)


class Stateful(ForwardOnly):
    """forward depends on earlier calls: a call counter shifts every output by count ulps."""

    name = "misbehaving-stateful"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def result(self, out, x):
        self.calls += 1
        for _ in range(self.calls % 4):  # the 1st, 5th, ... call is right, the others drift
            out = np.nextafter(out, np.inf).astype(out.dtype)
        return out


#: Each misbehaving backend and a regular expression its failure reason must match.
MISBEHAVING: dict[type[ForwardOnly], str] = {
    Raises: r"RuntimeError",
    WrongShape: r"shape",
    WrongDtype: r"dtype float64",
    ReturnsList: r"not an array",
    ReturnsNone: r"not an array",
    NaNOutput: r"finite|nan",
    InfOutput: r"finite|inf",
    MutatesInput: r"modified its input x",
    Hangs: r"hang|did not finish",
    Exits: r"crashed",
    Segfaults: r"crashed",
    NonDeterministic: r"second call vs first call|bit-identical",
    Stateful: r"second call vs first call|call after a call",
}
