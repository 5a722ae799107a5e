"""Grouped-query attention in the spec (n_kv_heads): the config, the mapping of query heads to
K/V heads, the step table's shapes, the backward's sum over each group and the cache's heads.

Every value is checked against something written independently of spec.steps.repeat_kv: the
ordinary block with K/V weights copied to every query head of a group, and PyTorch's
`scaled_dot_product_attention(enable_gqa=True)` with float64 autograd.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from spec import AttentionConfig, forward, grads, init_params, intermediates
from spec import cache as C
from spec.params import Params
from spec.shapes import expected_shapes

# The same float64 math in other operation orders: a few roundings (~1e-16) times the small
# cases' conditioning, as tests/test_backward.py's TORCH_RTOL.
RTOL = 1e-12
B, T, D_IN, HD = 2, 5, 3, 2


def make(H: int, Hkv: int, causal: bool = True, bias: bool = True, seed: int = 0):
    cfg = AttentionConfig(d_in=D_IN, d_out=H * HD, n_heads=H, n_kv_heads=Hkv, causal=causal, qkv_bias=bias)
    params = init_params(cfg, seed).map(lambda a: a * 3)  # peaked softmax rows: a wrong key shows
    x = np.random.default_rng(seed + 1).standard_normal((B, T, D_IN))
    return cfg, params, x


def full_heads(cfg: AttentionConfig, p: Params) -> tuple[AttentionConfig, Params]:
    """The ordinary config and params whose K/V head h is grouped K/V head h // group: rows copied."""
    g = cfg.group
    rows = lambda a: None if a is None else np.repeat(a.reshape(cfg.kv_heads, HD, *a.shape[1:]), g, axis=0) \
        .reshape(cfg.d_out, *a.shape[1:])  # noqa: E731  (d_kv, ...) -> (d_out, ...), head-blocks repeated
    full = AttentionConfig(d_in=cfg.d_in, d_out=cfg.d_out, n_heads=cfg.n_heads, causal=cfg.causal,
                           qkv_bias=cfg.qkv_bias)
    return full, Params(p.W_q, rows(p.W_k), rows(p.W_v), p.W_o, p.b_o, p.b_q, rows(p.b_k), rows(p.b_v))


def test_config_defaults_validates_and_round_trips():
    assert AttentionConfig(d_in=2, d_out=8, n_heads=4).kv_heads == 4
    assert AttentionConfig(d_in=2, d_out=8, n_heads=4) == AttentionConfig(d_in=2, d_out=8, n_heads=4, n_kv_heads=4)
    cfg = AttentionConfig(d_in=2, d_out=8, n_heads=4, n_kv_heads=2)
    assert (cfg.group, cfg.d_kv) == (2, 4)
    assert AttentionConfig.from_dict(cfg.to_dict()) == cfg
    assert "n_kv_heads" not in AttentionConfig(d_in=2, d_out=8, n_heads=4).to_dict()  # old results unchanged
    assert AttentionConfig(d_in=2, d_out=8, n_heads=4, n_kv_heads=4).n_kv_heads is None  # one spelling
    assert replace(AttentionConfig(d_in=2, d_out=8, n_heads=4), n_heads=1).kv_heads == 1  # replace stays ungrouped
    with pytest.raises(ValueError, match="n_kv_heads=2 does not divide n_heads=1"):
        replace(cfg, n_heads=1)  # a grouped one is validated again
    with pytest.raises(ValueError, match=r"n_kv_heads=3 does not divide n_heads=4.*valid: \[1, 2, 4\]"):
        AttentionConfig(d_in=2, d_out=8, n_heads=4, n_kv_heads=3)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="n_kv_heads"):
            AttentionConfig(d_in=2, d_out=8, n_heads=4, n_kv_heads=bad)


def test_params_and_steps_have_the_kv_shapes():
    cfg, p, x = make(6, 2)
    assert p.W_k.shape == p.W_v.shape == (2 * HD, D_IN) and p.b_k.shape == (2 * HD,)
    with pytest.raises(ValueError, match="W_k has shape"):
        Params(p.W_q, p.W_q, p.W_q, p.W_o, p.b_o, p.b_q, p.b_q, p.b_q).check(cfg)
    trace = intermediates(x, p, cfg)
    for n in range(4, 13):
        got = trace[n] if isinstance(trace[n], tuple) else (trace[n],)
        assert tuple(a.shape for a in got) == expected_shapes(n, cfg, B, T), f"step {n}"
    assert trace["k"].shape == (B, 2, T, HD) and trace["attn_scores"].shape == (B, 6, T, T)


@pytest.mark.parametrize("H,Hkv", [(4, 1), (6, 2), (6, 3), (4, 4)])
@pytest.mark.parametrize("causal", [True, False])
def test_forward_is_ordinary_attention_with_kv_heads_copied_to_their_group(H, Hkv, causal):
    cfg, p, x = make(H, Hkv, causal)
    full, fp = full_heads(cfg, p)
    np.testing.assert_array_equal(forward(x, p, cfg), forward(x, fp, full))  # the same products, exactly


def test_interleaved_mapping_differs():
    """h // group, not h % n_kv_heads: the two agree only when n_kv_heads is 1 or H."""
    cfg, p, x = make(4, 2)
    full, fp = full_heads(cfg, p)
    swap = lambda a: None if a is None else a.reshape(4, HD, *a.shape[1:])[[0, 2, 1, 3]].reshape(a.shape)  # noqa: E731
    wrong = Params(fp.W_q, swap(fp.W_k), swap(fp.W_v), fp.W_o, fp.b_o, fp.b_q, swap(fp.b_k), swap(fp.b_v))
    assert np.abs(forward(x, wrong, full) - forward(x, p, cfg)).max() > 1e-3


@pytest.mark.parametrize("H,Hkv", [(4, 1), (6, 2)])
def test_matches_torch_sdpa_enable_gqa_forward_and_autograd(H, Hkv):
    torch = pytest.importorskip("torch")
    cfg, p, x = make(H, Hkv)
    mask = np.ones((B, T), dtype=bool)
    mask[1, :2] = False  # padded keys too
    t = {k: torch.tensor(v, requires_grad=True) for k, v in p.arrays().items()}
    tx = torch.tensor(x, requires_grad=True)
    heads = lambda a, n: a.view(B, T, n, HD).transpose(1, 2)  # noqa: E731  (B, T, n*hd) -> (B, n, T, hd)
    q = heads(tx @ t["W_q"].T + t["b_q"], H)
    k, v = (heads(tx @ t[w].T + t[b], Hkv) for w, b in (("W_k", "b_k"), ("W_v", "b_v")))
    allowed = torch.ones(T, T, dtype=torch.bool).tril() & torch.tensor(mask)[:, None, None, :]
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)
    o = torch.nan_to_num(o)  # rows with no key: the spec's zeros (none here past query 1 of batch 1)
    out = o.transpose(1, 2).reshape(B, T, H * HD) @ t["W_o"].T + t["b_o"]
    want = forward(x, p, cfg, key_padding_mask=mask)
    valid = ~(np.arange(T)[None, :, None] < 2) | (np.arange(B)[:, None, None] == 0)  # (B, T, 1)
    assert np.abs(np.where(valid, out.detach().numpy() - want, 0)).max() <= RTOL * np.abs(want).max()
    g = np.where(valid, np.random.default_rng(7).standard_normal(want.shape), 0)
    out.backward(torch.tensor(g))
    got = grads(x, p, cfg, g, key_padding_mask=mask)
    refs = {name: (tx if name == "dx" else t[name[1:]]).grad.numpy() for name in got.arrays()}
    overall = max(np.abs(r).max() for r in refs.values())
    for name, a in got.arrays().items():
        ref = refs[name]
        # db_k is zero in exact arithmetic (softmax ignores a per-row shift): rounding noise, on the whole scale
        scale = overall if name == "db_k" else np.abs(ref).max()
        assert a.shape == ref.shape, name
        assert np.abs(a - ref).max() <= RTOL * scale, name


def test_kv_gradients_are_the_sum_over_the_group():
    cfg, p, x = make(6, 2)
    full, fp = full_heads(cfg, p)
    g = np.random.default_rng(3).standard_normal((B, T, cfg.d_out))
    got, ref = grads(x, p, cfg, g), grads(x, fp, full, g)
    overall = max(np.abs(a).max() for a in ref.arrays().values())  # db_k is rounding noise: on the whole scale
    for name in ("dW_k", "dW_v", "db_k", "db_v"):
        r = getattr(ref, name)
        summed = r.reshape(2, 3, HD, *r.shape[1:]).sum(axis=1).reshape(getattr(got, name).shape)  # over each group
        scale = overall if name == "db_k" else np.abs(summed).max()
        assert np.abs(getattr(got, name) - summed).max() <= RTOL * scale, name
        assert np.abs(getattr(got, name) - summed / 3).max() > 1e-3 * scale or name == "db_k"  # a mean would show
    np.testing.assert_allclose(got.dx, ref.dx, rtol=0, atol=RTOL * np.abs(ref.dx).max())


def test_cache_holds_the_kv_heads_and_decoding_matches_forward():
    cfg, p, x = make(6, 3)
    cache = C.prefill(x[:, :2], p, cfg)
    ys = []
    for i in range(2, T):
        y, cache = C.decode(x[:, i:i + 1], cache, p, cfg)
        ys.append(y)
    assert cache.k.shape == cache.v.shape == (B, 3, T, HD)
    want = forward(x, p, cfg)[:, 2:]
    assert np.abs(np.concatenate(ys, axis=1) - want).max() <= RTOL * np.abs(want).max()
    repeated = C.Cache(np.repeat(cache.k, 2, axis=1), np.repeat(cache.v, 2, axis=1), cache.key_padding_mask)
    with pytest.raises(ValueError, match="n_kv_heads"):
        C.decode(x[:, :1], repeated, p, cfg)
