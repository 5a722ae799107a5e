"""Conventions: where real libraries legitimately differ from the spec, the menu a backend may declare.

The spec decides every behaviour below (the first value of each menu is the spec's). A few
behaviours differ between widely used libraries for reasons their authors chose on purpose:
what a query with no visible key gets, whether a padded query's own output row is computed,
whether float64 is computed in float32. A backend may declare its value from this fixed menu
(`Capabilities(conventions={...})`); the suite then judges everything else against the spec
adjusted for that value, and the report shows the declaration beside the verdict.

`adjusted_rows` gives the rows a convention overrides and their values, in float64, from the
spec's own intermediates: the oracle stays the spec, with those rows replaced.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from spec.config import AttentionConfig
from spec.invariants import attendable
from spec.masks import visible
from spec.params import Params

#: name -> {value: what it means}; the first value of each is the spec's own decision.
MENU: dict[str, dict[str, str]] = {
    "fully_masked_rows": {
        "zero_context": "a query with no visible key gets a zero context vector, so its output is b_o (the spec)",
        "mean_v": "a query with no visible key gets the mean of V over every key, future and padded keys "
                  "included (uniform weights: what a large finite mask value gives)",
        "uniform_causal_keys": "a query with no visible key gets the mean of V over the keys the causal mask "
                               "allows, padded keys included (padding masked by a finite value, causality by -inf)",
        "nan": "a query with no visible key gets NaN (softmax of a row that is all -inf)",
        "zero_output": "a query with no visible key gets an output row of zeros (b_o not added)",
    },
    "padded_query_rows": {
        "computed": "a padded query token's output is computed like any other row (the spec: the key padding "
                    "mask masks keys, not queries)",
        "zero_output": "a padded query token's output row is zeros, even where that query sees keys",
    },
    "float64_compute": {
        "float64": "float64 inputs are computed in float64 (the spec)",
        "float32": "float64 inputs are computed in float32 internally and returned as float64",
    },
}

#: The spec's own value of each convention.
SPEC: dict[str, str] = {name: next(iter(values)) for name, values in MENU.items()}


def validate(conventions: Mapping[str, str]) -> dict[str, str]:
    """The declared conventions as a plain dict; ValueError naming a bad name or value and the valid ones."""
    if not isinstance(conventions, Mapping):
        raise ValueError(f"conventions must be a mapping of name -> value, got {type(conventions).__name__}")
    out = {}
    for name, value in conventions.items():
        if name not in MENU:
            raise ValueError(f"unknown convention {name!r}; valid: {', '.join(MENU)}")
        if value not in MENU[name]:
            raise ValueError(f"convention {name}={value!r} is not on the menu; valid: {', '.join(MENU[name])}")
        out[name] = value
    return out


def departures(conventions: Mapping[str, str]) -> dict[str, str]:
    """The conventions whose value is not the spec's (declaring the spec's value changes nothing)."""
    return {k: v for k, v in conventions.items() if SPEC.get(k) != v}


def empty_rows(config: AttentionConfig, B: int, Tq: int, Tk: int,
               key_padding_mask: np.ndarray | None) -> np.ndarray:
    """Boolean [B, Tq]: queries with no visible key (every key masked by causality or padding)."""
    return ~attendable(config, B, Tq, Tk, key_padding_mask)[:, 0].any(-1)


def _values(x: np.ndarray, p: Params) -> np.ndarray:
    return x @ p.W_v.T + (0 if p.b_v is None else p.b_v)  # (B, T, d_out): every head's V, concatenated


def adjusted_rows(conventions: Mapping[str, str], x: np.ndarray, params: Params, config: AttentionConfig,
                  key_padding_mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows [B, T] bool, values [B, T, d_out] float64) a declared convention overrides, or None.

    Only the forward's output rows are overridden; every other row is the spec's. Where both
    row conventions apply to a row, the padded-query one wins (its row is zero either way).
    """
    dep = departures(conventions)
    B, T, _ = x.shape
    rows = np.zeros((B, T), dtype=bool)
    values = np.zeros((B, T, config.d_out))
    rule = dep.get("fully_masked_rows")
    if rule is not None:
        empty = empty_rows(config, B, T, T, key_padding_mask)
        rows |= empty
        if rule in ("mean_v", "uniform_causal_keys"):
            causal = rule == "uniform_causal_keys" and config.causal
            ok = np.ones((B, T, T), dtype=bool) & visible(T, T, causal)[0]  # (B, Tq, Tk): keys averaged over
            mean_v = (ok / ok.sum(-1, keepdims=True)) @ _values(x, params)  # (B, T, d_out)
            values = np.where(empty[..., None], mean_v @ params.W_o.T + params.b_o, values)
        elif rule == "nan":
            values = np.where(empty[..., None], np.nan, values)
        # zero_output: zeros already
    if dep.get("padded_query_rows") == "zero_output" and key_padding_mask is not None:
        padded = ~np.asarray(key_padding_mask, dtype=bool)  # (B, T): the query token itself is padding
        rows |= padded
        values = np.where(padded[..., None], 0.0, values)
    return (rows, values) if rows.any() else None


def governed_rows(conventions: Mapping[str, str], config: AttentionConfig, B: int, T: int,
                  key_padding_mask: np.ndarray | None) -> np.ndarray:
    """Boolean [B, T]: output rows whose value a declared row convention decides (not the spec)."""
    dep = departures(conventions)
    rows = np.zeros((B, T), dtype=bool)
    if "fully_masked_rows" in dep:
        rows |= empty_rows(config, B, T, T, key_padding_mask)
    if "padded_query_rows" in dep and key_padding_mask is not None:
        rows |= ~np.asarray(key_padding_mask, dtype=bool)
    return rows


def compute_dtype(conventions: Mapping[str, str], dtype: str) -> str:
    """The dtype a backend with these conventions computes `dtype` inputs in."""
    if dtype == "float64" and departures(conventions).get("float64_compute") == "float32":
        return "float32"
    return dtype
