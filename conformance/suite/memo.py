"""The references of one worker, remembered: the same inputs computed once while they are kept.

Backends that declare the same capabilities draw the same examples from the same seed (numpy
and torch at float64 and float32: the strategies read only the capabilities and the dtype),
and several checks build the same case; each time the golden and the plain reference (most of
the suite's CPU time) were computed again. `conformance.suite.reference.golden_and_plain` looks
its inputs up here first, and so does `reference.step_inputs` (the step checks' float64
trace). Only this process sees its entries: a repeat in another worker, or one after its entry
was evicted, is computed again (measured: 15% of a backend's reference calls hit within its own
run; over a default run's two workers 8,848 of 18,030 lookups hit, against 8,922 in one worker;
the mutants' kill run, which repeats draws mutant after mutant, hits far more).

A key is a digest of everything the references depend on: the function and the orders (by
module and qualified name; closures and other local functions are never remembered, their
name does not say what they compute), the dtype under test, the dtype the plain runs compute
in (a declared convention changes it), the number of ulp-moved runs, and every argument's
dtype, shape and bytes (SHA-1). An argument of another type makes the call unremembered. A hit returns copies, so a check that
edits its reference in place cannot change another's. Least recently used entries go first
past `BUDGET_BYTES`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

from spec.scores import BiasArray

#: Bytes of remembered references per worker process: the largest example's golden and plain
#: runs (an output of [B, T, d_out] in float64, five times) are a few MB, the suite's memory
#: budget per example 1 GiB (conformance.suite.sizes.BUDGET_BYTES).
BUDGET_BYTES = 256 << 20

_ENTRIES: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()
_USED = {"bytes": 0, "hits": 0, "misses": 0}


class _Unkeyable(Exception):
    pass


def _name(fn: Callable) -> str:
    qualname = getattr(fn, "__qualname__", "")
    if not qualname or "<locals>" in qualname or "<lambda>" in qualname or getattr(fn, "__closure__", None):
        raise _Unkeyable(qualname)
    return f"{fn.__module__}.{qualname}"


def _feed(h: Any, a: Any) -> None:
    if isinstance(a, np.ndarray):
        h.update(f"array {a.dtype.str} {a.shape}|".encode())
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))  # the bytes in place, not a copy
    elif a is None or isinstance(a, (bool, int, float, str)):
        h.update(f"{type(a).__name__} {a!r}|".encode())
    elif isinstance(a, BiasArray):  # AttentionConfig.bias as an array
        h.update(b"bias ")
        _feed(h, a.array)
    elif isinstance(a, tuple):
        h.update(f"tuple {len(a)}|".encode())
        for v in a:
            _feed(h, v)
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):  # Params, AttentionConfig
        h.update(f"{type(a).__module__}.{type(a).__qualname__}|".encode())
        for f in dataclasses.fields(a):
            h.update(f"{f.name}=".encode())
            _feed(h, getattr(a, f.name))
    else:
        raise _Unkeyable(type(a).__name__)


def key(fn: Callable, dtype: str, plain_dtype: str, orders: tuple[Callable, ...], perturbed_runs: int,
        args: tuple, kwargs: dict[str, Any], exact_orders: bool = False) -> bytes | None:
    """The digest of one golden_and_plain call (or step trace), or None when it cannot be keyed safely."""
    # SHA-1 (no adversary chooses these inputs): 5 ns per float64 entry here against 16 for BLAKE2b,
    # and a large example's weights are hashed for every reference call (tens of MB)
    h = hashlib.sha1()
    try:
        h.update(f"{_name(fn)}|{dtype}|{plain_dtype}|{[_name(o) for o in orders]}|{perturbed_runs}|"
                 f"{exact_orders}|".encode())
        _feed(h, tuple(args))
        for k in sorted(kwargs):
            h.update(f"kw {k}|".encode())
            _feed(h, kwargs[k])
    except _Unkeyable:
        return None
    return h.digest()


def _copy(value: Any) -> Any:
    from conformance.suite.tolerance import Plain

    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, tuple):
        return tuple(_copy(v) for v in value)
    if isinstance(value, Plain):
        return Plain(tuple(r.copy() for r in value.runs))
    if isinstance(value, dict):  # a step trace (spec.table.Trace): its own type kept
        return type(value)({k: _copy(v) for k, v in value.items()})
    return value


def _size(value: Any) -> int:
    from conformance.suite.tolerance import Plain

    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, tuple):
        return sum(_size(v) for v in value)
    if isinstance(value, Plain):
        return sum(r.nbytes for r in value.runs)
    if isinstance(value, dict):
        return sum(_size(v) for v in value.values())
    return 64


def get(k: bytes | None) -> Any | None:
    """A copy of the remembered value, or None."""
    if k is None or k not in _ENTRIES:
        _USED["misses"] += 1
        return None
    _ENTRIES.move_to_end(k)
    _USED["hits"] += 1
    return _copy(_ENTRIES[k][0])


def put(k: bytes | None, value: Any) -> None:
    """Remember a copy of value under k, forgetting the least recently used past the budget."""
    if k is None:
        return
    size = _size(value)
    if size > BUDGET_BYTES // 2:  # one huge entry would push out everything else
        return
    _ENTRIES[k] = (_copy(value), size)
    _USED["bytes"] += size
    while _USED["bytes"] > BUDGET_BYTES:
        _, (_, freed) = _ENTRIES.popitem(last=False)
        _USED["bytes"] -= freed


def stats() -> dict[str, int]:
    """Hits, misses, entries and bytes so far in this process (for tests and profiling)."""
    return {**_USED, "entries": len(_ENTRIES)}


def clear() -> None:
    _ENTRIES.clear()
    _USED.update(bytes=0, hits=0, misses=0)
