"""Properties that belong to grouped-query attention (Capabilities.grouped_kv).

The spec's mapping (query head h reads K/V head h // (H / n_kv_heads)) is checked end to end by
matches_spec on grouped draws; here the suite builds, by itself, the ordinary attention that
grouping must equal: each K/V head's rows of W_k, W_v (and b_k, b_v) copied to every query head
of its group. The backend runs both; nothing about the copy is asked of it. Head permutations
that keep the groups (end_to_end.head_permutation_invariance) and the cache's K/V heads
(cache.cache_holds_spec_kv) draw grouped configurations in their own checks.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import strategies as st

from conformance.suite import strategies as cs
from conformance.suite.checks import check
from conformance.suite.reference import forward_golden_and_plain
from spec.config import AttentionConfig
from spec.params import Params


def repeated_kv(config: AttentionConfig, params: Params) -> tuple[AttentionConfig, Params]:
    """The ordinary config (n_kv_heads = H) and params whose K/V head h is the grouped K/V head
    h // group: W_k, W_v, b_k, b_v [d_kv, ...] -> [d_out, ...], head blocks of rows copied."""
    g, hd = config.group, config.head_dim

    def rows(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        heads = a.reshape(config.kv_heads, hd, *a.shape[1:])  # (Hkv, hd, ...)
        return np.repeat(heads, g, axis=0).reshape(config.d_out, *a.shape[1:])  # (H * hd, ...)

    full = replace(config, n_kv_heads=config.n_heads)
    return full, replace(params, W_k=rows(params.W_k), W_v=rows(params.W_v), b_k=rows(params.b_k),
                         b_v=rows(params.b_v))


@st.composite
def _grouped_cases(draw, caps, dtype):
    """An everyday case with n_kv_heads < H (a grouped draw of cs.configs)."""
    return draw(cs.cases(caps, dtype).filter(lambda c: c.config.kv_heads < c.config.n_heads))


@check(step=None, strategy=_grouped_cases, needs=("grouped_kv",), examples=cs.grouped_representatives)
def grouped_equals_repeated_kv(run, case):
    """Grouped K/V heads give what ordinary attention gives with each K/V head copied to its group of query heads."""
    full, params = repeated_kv(case.config, case.params)
    y = run.forward(case)
    y_full = run.forward(case.with_(config=full, params=params))
    golden, plain = forward_golden_and_plain(case)
    rows = run.property_rows(case.config, case.key_padding_mask, case.B, case.T)
    run.assert_same(f"forward with n_kv_heads={case.config.kv_heads} vs n_kv_heads={full.kv_heads} and "
                    f"K/V weights copied to each group", y, y_full, golden, plain, rows)
