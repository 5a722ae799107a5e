"""Calling a backend from a check: conversion at the edges, and every misbehaviour named.

`Runner` converts the case's float64 arrays to the dtype under test, calls the backend, and
converts back, turning an exception, a non-array, a wrong shape or a wrong dtype into a
`CheckFailure` that says which call did it. Values are returned as float64 NumPy arrays.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

from conformance.suite import layouts
from conformance.suite.case import Case
from conformance.text import first_line, safe_repr
from conformance.suite.checks import CheckFailure
from conformance.suite.grad_reference import grad_shapes
from conformance.suite.judgement import active
from conformance.suite.timeshare import spent
from conformance.suite.tolerance import compare, compare_pair
from spec.config import numpy_dtype
from impls.base import GRAD_NAMES
from spec.params import Params
from spec.shapes import expected_shapes
from spec.table import STEPS, call_args


def _grad_mapping(got: Any) -> tuple[Any, set]:
    """backward's result as a mapping and its keys with a value; its own methods may raise."""
    got = got.arrays() if hasattr(got, "arrays") and callable(got.arrays) else got
    if not hasattr(got, "keys"):
        raise CheckFailure(f"backward: expected a spec.block.Grads or a mapping by {', '.join(GRAD_NAMES)}, "
                           f"got {type(got).__name__}")
    return got, {k for k in got.keys() if got[k] is not None}


class Runner:
    """One backend at one dtype, as seen by the checks."""

    def __init__(self, backend: Any, dtype: str, observers: list[Callable[[str, Any], None]] | None = None):
        self.backend = backend
        self.dtype = dtype
        self.np_dtype = numpy_dtype(dtype)
        self.observers = list(observers or ())  # each sees every comparison (the calibration records them)
        self.laid: dict[str, str] = {}  # input role -> layout its next conversions take (`laid_out`)
        self.layouts_seen: dict[str, str | None] = {}  # "role layout" -> None if it reached the backend, else why not

    # -- edges ---------------------------------------------------------------------------
    def native(self, a: np.ndarray | None, role: str | None = None) -> Any:
        """float64 or bool NumPy array -> the backend's array in the dtype under test; in the
        layout `laid_out` gave `role`, if any, and whether that layout reached it noted."""
        if a is None:
            return None
        bool_ = a.dtype == np.bool_
        a = a.copy() if bool_ else a.astype(self.np_dtype)
        layout = self.laid.get(role) if role else None
        if layout:
            a = layouts.lay_out(a, layout, layouts.BROADCAST_AXIS.get(role, 0))
        out = self.call("from_numpy", self.backend.from_numpy, a, None if bool_ else self.dtype)
        if layout:
            key = f"{role} {layout}"
            why = layouts.reached(a, out)
            if why is None or key not in self.layouts_seen:  # reached once is reached
                self.layouts_seen[key] = why
        return out

    @contextmanager
    def laid_out(self, plan: dict[str, str]) -> Iterator[None]:
        """Inputs by role ("x", "key_padding_mask", "grad_out", a step's input name) converted in
        the plan's layouts (`conformance.suite.layouts`) inside the block; contiguous after."""
        self.laid = dict(plan)
        try:
            yield
        finally:
            self.laid = {}

    def weights(self, params: Params) -> Any:
        return self.call("prepare", self.backend.prepare, params, self.dtype)

    def to_float64(self, what: str, out: Any, shape: tuple[int, ...]) -> np.ndarray:
        """Backend output -> float64 NumPy, after checking it is an array of `shape` in the dtype."""
        try:
            a = self.call("to_numpy() of the result", self.backend.to_numpy, out)
        except CheckFailure as e:
            raise CheckFailure(f"{what}: {e}; the backend returned {type(out).__name__}") from None
        if not isinstance(a, np.ndarray):
            raise CheckFailure(f"{what}: returned {type(out).__name__}, which to_numpy() turned into "
                               f"{type(a).__name__}, not an array")
        if a.shape != tuple(shape):
            raise CheckFailure(f"{what}: returned shape {a.shape}, expected {tuple(shape)}")
        self._check_dtype(what, a)
        return a.astype(np.float64)

    def _check_dtype(self, what: str, a: np.ndarray) -> None:
        if a.dtype == self.np_dtype:
            return
        # to_numpy may widen bfloat16 (NumPy has none): accept only bfloat16-exact values
        if self.dtype == "bfloat16" and a.dtype == np.float32:
            if np.array_equal(a.astype(self.np_dtype).astype(np.float32), a, equal_nan=True):
                return
            raise CheckFailure(f"{what}: returned float32 values that are not bfloat16 values; "
                               f"the output must be computed in bfloat16")
        raise CheckFailure(f"{what}: returned dtype {a.dtype}, expected {self.dtype} (output dtype must equal input dtype)")

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs), any exception turned into a CheckFailure naming `what`; NumPy's
        error state put back (an np.seterr leak must not hit the spec's arithmetic after it)."""
        err = np.geterr()
        try:
            with spent("backend"):
                return fn(*args, **kwargs)
        except CheckFailure:
            raise
        except Exception as e:
            raise CheckFailure(f"{what} raised {first_line(e)[:300]}") from None  # str(e) may raise
        finally:
            np.seterr(**err)

    # -- calls -------------------------------------------------------------------------
    def forward(self, case: Case, *, training: bool = False) -> np.ndarray:
        """The backend's full forward on the case, as float64 NumPy.

        A check that needs other inputs makes another case (`case.with_(x=..., params=...)`).
        The case's keep mask is passed only with `training=True` (dropout replayed); training
        without a keep mask asks for the backend's own random dropout.
        """
        kwargs = self._mask_kwargs(case, training)
        out = self.call("forward", self.backend.forward, self.native(case.x, "x"), self.weights(case.params),
                        case.config, **kwargs)
        self.call("synchronize", self.backend.synchronize)
        return self.to_float64("forward", out, (case.B, case.T, case.config.d_out))

    def _mask_kwargs(self, case: Case, training: bool) -> dict[str, Any]:
        """forward's keyword arguments for the case: its padding mask, and its keep mask and
        training=True when training (without a keep mask: the backend's own random dropout)."""
        kwargs: dict[str, Any] = {}
        if case.key_padding_mask is not None:
            kwargs["key_padding_mask"] = self.native(case.key_padding_mask, "key_padding_mask")
        if training and case.dropout_mask is not None:
            kwargs["dropout_mask"] = self.native(case.dropout_mask)
        if training:
            kwargs["training"] = True
        return kwargs

    def grads(self, case: Case, grad_out: np.ndarray, *, training: bool = False) -> dict[str, np.ndarray]:
        """The backend's gradients (forward_for_grad, then backward) on the case, float64 by name.

        Every gradient the spec has for the case must come back (db_q/db_k/db_v exactly when
        qkv_bias) in its parameter's shape and the dtype under test; the keep mask is replayed
        as in `forward`. "out" holds forward_for_grad's output.
        """
        kwargs = self._mask_kwargs(case, training)
        res = self.call("forward_for_grad", self.backend.forward_for_grad, self.native(case.x, "x"),
                        self.weights(case.params), case.config, **kwargs)
        if not isinstance(res, (tuple, list)) or len(res) != 2:
            raise CheckFailure(f"forward_for_grad: expected (out, saved), got {type(res).__name__}")
        got = self.call("backward", self.backend.backward, res[1], self.native(grad_out, "grad_out"))
        self.call("synchronize", self.backend.synchronize)
        shapes = grad_shapes(case)
        got, present = self.call("reading backward's gradients", _grad_mapping, got)
        if present != set(shapes):
            raise CheckFailure(f"backward: returned gradients {sorted(map(safe_repr, present))}, "
                               f"expected {sorted(shapes)}")
        out = {"out": self.to_float64("forward_for_grad", res[0], (case.B, case.T, case.config.d_out))}
        out.update({k: self.to_float64(f"backward {k}", got[k], s) for k, s in shapes.items()})
        return out

    def step(self, name: str, *args: Any, shapes: tuple[tuple[int, ...], ...], roles: tuple[str, ...] = (),
             **kwargs: Any):
        """Call the backend's step method `name`; NumPy arrays in args are converted first
        (`roles`: the args' input names, for `laid_out`; keyword arguments are named by their key)."""
        roles = tuple(roles) + (None,) * (len(args) - len(roles))
        conv = [self.native(a, r) if isinstance(a, np.ndarray) else a for a, r in zip(args, roles)]
        kw = {k: (self.native(v, k) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
        out = self.call(name, getattr(self.backend, name), *conv, **kw)
        self.call("synchronize", self.backend.synchronize)
        if len(shapes) == 1:
            return self.to_float64(name, out, shapes[0])
        if not isinstance(out, (tuple, list)) or len(out) != len(shapes):
            raise CheckFailure(f"{name}: expected a tuple of {len(shapes)} arrays, got {type(out).__name__}")
        return tuple(self.to_float64(f"{name}[{i}]", o, s) for i, (o, s) in enumerate(zip(out, shapes)))

    def table_step(self, n: int, case: Case, trace: dict[str, Any], *, tensor: int = 0) -> Any:
        """The backend's step n on the trace's values, called and shaped as the step table says.

        `trace` maps the step's input names to float64 arrays (`spec.table.call_args`); the
        case gives the config, masks and weights. A per-tensor step (5, 6) gets the Q, K or V
        that `tensor` picks.
        """
        s = STEPS[n]
        weights = self.weights(case.params) if "params" in s.inputs else None
        args, kwargs = call_args(n, trace, case.config, case.key_padding_mask, weights=weights,
                                 tensor=tensor, dropout_mask=case.dropout_mask)
        shapes = expected_shapes(n, case.config, case.B, case.T)
        roles = tuple(r for r in s.inputs if r not in kwargs and r not in ("key_padding_mask", "dropout_mask"))
        return self.step(s.name, *args, shapes=(shapes[tensor],) if s.per_tensor else shapes, roles=roles, **kwargs)

    # -- KV-cache decoding (Capabilities.kv_cache): the cache itself stays opaque ----------
    def prefill(self, x: np.ndarray, weights: Any, config: Any, key_padding_mask: np.ndarray | None = None) -> Any:
        """The backend's cache of the prompt x [B, t, d_in] (float64 NumPy, converted here)."""
        kw = {} if key_padding_mask is None else {"key_padding_mask": self.native(key_padding_mask)}
        cache = self.call("prefill", self.backend.prefill, self.native(x), weights, config, **kw)
        self.call("synchronize", self.backend.synchronize)
        return cache

    def decode(self, what: str, x_new: np.ndarray, cache: Any, weights: Any, config: Any,
               key_padding_mask: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
        """(y_new [B, n, d_out] as float64 NumPy, the backend's cache') for new tokens x_new [B, n, d_in]."""
        kw = {} if key_padding_mask is None else {"key_padding_mask": self.native(key_padding_mask)}
        out = self.call(what, self.backend.decode, self.native(x_new), cache, weights, config, **kw)
        self.call("synchronize", self.backend.synchronize)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise CheckFailure(f"{what}: decode must return (y_new, cache), got {type(out).__name__}")
        return self.to_float64(what, out[0], (*x_new.shape[:2], config.d_out)), out[1]

    def cache_kv(self, what: str, cache: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The cache's K and V [B, H, t, head_dim] as float64 NumPy (Capabilities.cache_arrays)."""
        out = self.call(what, self.backend.cache_kv, cache)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise CheckFailure(f"{what}: cache_kv must return (K, V), got {type(out).__name__}")
        return self.to_float64(f"{what} K", out[0], shape), self.to_float64(f"{what} V", out[1], shape)

    # -- assertions ----------------------------------------------------------------------
    def assert_close(self, what: str, actual: np.ndarray, golden: np.ndarray, plain: np.ndarray,
                     floor_scale: float = 1.0) -> None:
        """Tolerance model: err(actual) <= K * err(plain in D) + floor(D), relative to |golden|."""
        c = self.observe(what, compare(actual, golden, plain, self.dtype, floor_scale))
        if not c.ok:
            raise CheckFailure(f"{what}: {c.summary()}", max_error=c.err, tolerance=c.allowed, where=c.worst_index)

    def assert_same(self, what: str, actual: np.ndarray, baseline: np.ndarray, golden: np.ndarray,
                    plain: Any, rows: np.ndarray | None = None) -> None:
        """A property: two runs of this backend agree (`tolerance.compare_pair`), on `rows`
        ([B, T] bool over the arrays' first two axes; None: all). Checks leave out the rows a
        declared convention decides (`property_rows`): matches_spec judges those."""
        if rows is not None:
            actual, baseline, golden, plain = actual[rows], baseline[rows], golden[rows], plain[rows]
        c = self.observe(what, compare_pair(actual, baseline, golden, plain, self.dtype))
        if not c.ok:
            raise CheckFailure(f"{what}: the backend disagrees with itself: {c.summary()}",
                               max_error=c.err, tolerance=c.allowed)

    def property_rows(self, config: Any, key_padding_mask: np.ndarray | None, B: int, T: int) -> np.ndarray:
        """[B, T]: the output rows a property judges, those no declared row convention decides."""
        return ~active().governed(config, B, T, key_padding_mask)

    def observe(self, what: str, c: Any) -> Any:
        """Every tolerance comparison a check makes passes here, on its way to its verdict: the
        one hook for tools that record comparisons (the calibration). Returns `c`."""
        for observer in self.observers:
            observer(what, c)
        return c

    def assert_exact(self, what: str, measure: float, detail: str = "") -> None:
        """An invariant that must hold exactly (index bookkeeping, masked zeros)."""
        if measure != 0.0:
            # repr: the shortest text that reads back as the same float, so no digit is hidden
            raise CheckFailure(f"{what}: violated by {float(measure)!r} (must be exactly 0){detail}",
                               max_error=float(measure), tolerance=0.0)
