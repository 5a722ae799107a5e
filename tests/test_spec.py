"""The spec's own tests: hand-computed examples, shape contracts, invariants, validation, and
agreement with two oracles nobody here wrote (torch's MultiheadAttention and SDPA)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spec import (
    AttentionConfig,
    Params,
    expected_shape,
    forward,
    init_params,
    intermediates,
)
from spec import invariants as inv
from spec import steps as S
from spec.config import validate_input, validate_key_padding_mask


def identity_params(d: int) -> Params:
    eye = np.eye(d)
    return Params(W_q=eye, W_k=eye.copy(), W_v=eye.copy(), W_o=eye.copy(), b_o=np.zeros(d))


# -- a small example computed by hand -----------------------------------------------------
def test_hand_computed_causal_one_head():
    # x = I (2 tokens, 2 features), all weights I: Q = K = V = x, scores = x x^T = I.
    # Query 0 sees key 0 only: weights [1, 0]. Query 1 sees both keys with scores [0, 1],
    # scaled by 1/sqrt(2): softmax([0, 0.70711]) = [1/(1+e^0.70711), e^0.70711/(1+e^0.70711)].
    cfg = AttentionConfig(d_in=2, d_out=2, n_heads=1)
    x = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    y = forward(x, identity_params(2), cfg)
    expected = np.array([[[1.0, 0.0], [0.3302384506733431, 0.6697615493266569]]])
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-15)


def test_hand_computed_two_heads_non_causal_with_biases():
    # Two heads of size 1. x = [[1, 2], [3, 4]], W = I, so head 0 sees values (1, 3) and
    # head 1 sees (2, 4). Head 0 scores [[1, 3], [3, 9]]; head 1 [[4, 8], [8, 16]]; head_dim = 1,
    # so no scaling. Softmax rows: head 0 row 0: [1, e^2]/(1 + e^2) = [0.119203, 0.880797].
    # Output bias b_o = [10, 20] is added at the end.
    cfg = AttentionConfig(d_in=2, d_out=2, n_heads=2, causal=False)
    p = identity_params(2)
    p = Params(p.W_q, p.W_k, p.W_v, p.W_o, b_o=np.array([10.0, 20.0]))
    x = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    y = forward(x, p, cfg)
    s = 1 / (1 + math.exp(2))  # 0.11920292202211755
    h0 = [s * 1 + (1 - s) * 3, 1 / (1 + math.exp(6)) * 1 + (1 - 1 / (1 + math.exp(6))) * 3]
    h1 = [1 / (1 + math.exp(4)) * 2 + (1 - 1 / (1 + math.exp(4))) * 4,
          1 / (1 + math.exp(8)) * 2 + (1 - 1 / (1 + math.exp(8))) * 4]
    expected = np.array([[[h0[0] + 10, h1[0] + 20], [h0[1] + 10, h1[1] + 20]]])
    np.testing.assert_allclose(y, expected, rtol=1e-14)
    assert y[0, 0, 0] == pytest.approx(2.761594155955765 + 10, rel=1e-12)  # 1*0.1192 + 3*0.8808, by hand


def test_fully_masked_query_row_gives_zero_context():
    cfg = AttentionConfig(d_in=2, d_out=2, n_heads=1)
    x = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    kpm = np.array([[False, True]])  # key 0 padded: causal query 0 has nothing to attend to
    w = intermediates(x, identity_params(2), cfg, kpm)[8]
    assert np.array_equal(w[0, 0, 0], [0.0, 0.0])
    np.testing.assert_allclose(w[0, 0, 1], [0.0, 1.0])
    assert np.isfinite(forward(x, identity_params(2), cfg, kpm)).all()


def test_dropout_mask_is_inverted_dropout():
    cfg = AttentionConfig(d_in=2, d_out=2, n_heads=1, causal=False, dropout_p=0.5)
    scores = np.zeros((1, 1, 2, 2))
    keep = np.array([[[[True, False], [True, True]]]])
    w = S.attn_weights(scores, cfg, dropout_mask=keep)
    np.testing.assert_array_equal(w, [[[[1.0, 0.0], [1.0, 1.0]]]])  # 0.5 / (1 - 0.5) = 1


def test_causal_mask_is_aligned_bottom_right_for_decoding():
    m = S.causal_mask(2, 4)  # 2 new queries at positions 2 and 3 of 4 keys
    np.testing.assert_array_equal(m, [[False, False, False, True], [False, False, False, False]])
    np.testing.assert_array_equal(S.causal_mask(3, 3), np.triu(np.ones((3, 3), bool), 1))


# -- split / merge ------------------------------------------------------------------------
@pytest.mark.parametrize("B,T,H,hd", [(1, 1, 1, 1), (2, 5, 3, 4), (3, 7, 4, 2)])
def test_split_merge_round_trip_and_index(B, T, H, hd):
    x = np.arange(B * T * H * hd, dtype=np.float64).reshape(B, T, H * hd)
    split = S.split_heads(x, H)
    assert inv.split_matches_index(x, split, H) == 0.0
    grouped = S.group_by_heads(split)
    assert grouped.shape == (B, H, T, hd)
    back = S.concat_heads(S.permute_back(grouped))
    assert np.array_equal(back, x)
    # a merge without the permute back is not the inverse (the bug the suite looks for)
    if H > 1 and T > 1:
        assert not np.array_equal(grouped.reshape(B, T, H * hd), x)


# -- shape contracts and invariants --------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False])
def test_every_step_has_the_contracted_shape_and_invariants(causal):
    cfg = AttentionConfig(d_in=5, d_out=6, n_heads=3, causal=causal, qkv_bias=True)
    B, T = 2, 7
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, 5))
    kpm = rng.random((B, T)) > 0.3
    out = intermediates(x, init_params(cfg, 1), cfg, kpm)
    for step in range(4, 13):
        value = out[step][0] if isinstance(out[step], tuple) else out[step]
        assert value.shape == expected_shape(step, cfg, B, T), step
    ok = inv.attendable(cfg, B, T, T, kpm)
    assert inv.masked_weights_are_zero(out[8], ok) == 0.0
    assert inv.weights_nonnegative(out[8]) == 0.0
    np.testing.assert_allclose(out[8].sum(-1), np.broadcast_to(ok.any(-1), out[8].shape[:-1]), atol=1e-14)
    assert inv.context_in_convex_hull(out[9], out[6][2], ok) < 1e-14
    assert inv.permute_back_restores_order(out[9], out[10]) == 0.0
    shifted = S.attn_weights(out[7] + 1e4, cfg, kpm)
    np.testing.assert_allclose(shifted, out[8], rtol=0, atol=1e-9)
    if causal:
        np.testing.assert_allclose(out[9][:, :, 0][kpm[:, 0]], out[6][2][:, :, 0][kpm[:, 0]], rtol=1e-14)


def test_large_logits_stay_finite():
    cfg = AttentionConfig(d_in=4, d_out=4, n_heads=2)
    scores = np.random.default_rng(1).uniform(-1, 1, (1, 2, 6, 6)) * 1e300
    w = S.attn_weights(scores, cfg)
    assert np.isfinite(w).all()
    np.testing.assert_allclose(w.sum(-1), 1.0)
    unit = scores / 1e300
    for dt, magnitude in ((np.float32, 1e30), (np.float16, 6e4)):  # near each dtype's max
        w = S.attn_weights((unit * magnitude).astype(dt), cfg)
        assert np.isfinite(w).all() and w.dtype == dt


# -- validation: every invalid value is a ValueError that names it -------------------------
@pytest.mark.parametrize("kwargs,needle", [
    ({"d_in": 4, "d_out": 6, "n_heads": 4}, "d_out=6 is not divisible by n_heads=4"),
    ({"d_in": 0, "d_out": 4, "n_heads": 1}, "d_in must be a positive integer, got 0"),
    ({"d_in": 4, "d_out": -4, "n_heads": 1}, "d_out must be a positive integer, got -4"),
    ({"d_in": 4, "d_out": 4, "n_heads": 0}, "n_heads must be a positive integer, got 0"),
    ({"d_in": 4.0, "d_out": 4, "n_heads": 1}, "d_in must be a positive integer, got 4.0"),
    ({"d_in": True, "d_out": 4, "n_heads": 1}, "d_in must be a positive integer, got True"),
    ({"d_in": 4, "d_out": 4, "n_heads": 1, "dropout_p": 1.0}, "dropout_p must be a number in [0, 1), got 1.0"),
    ({"d_in": 4, "d_out": 4, "n_heads": 1, "dropout_p": float("nan")}, "dropout_p"),
    ({"d_in": 4, "d_out": 4, "n_heads": 1, "causal": "yes"}, "causal must be True or False, got 'yes'"),
])
def test_invalid_config_is_a_value_error_naming_the_value(kwargs, needle):
    with pytest.raises(ValueError) as e:
        AttentionConfig(**kwargs)
    assert needle in str(e.value)


def test_divisibility_error_lists_valid_head_counts():
    with pytest.raises(ValueError, match=r"valid: \[1, 2, 3, 6\]"):
        AttentionConfig(d_in=1, d_out=6, n_heads=4)


@pytest.mark.parametrize("x,needle", [
    (np.zeros((2, 3)), "rank 3"),
    (np.zeros((1, 2, 4), dtype=np.int64), "got dtype int64"),
    (np.zeros((1, 2, 5)), "d_in=5 features but the config says d_in=4"),
    (np.zeros((0, 2, 4)), "B >= 1 and T >= 1"),
])
def test_invalid_input_is_a_value_error(x, needle):
    with pytest.raises(ValueError, match=needle):
        validate_input(x, AttentionConfig(d_in=4, d_out=4, n_heads=2))


def test_invalid_masks_and_params_are_value_errors():
    with pytest.raises(ValueError, match="boolean"):
        validate_key_padding_mask(np.ones((1, 3)), 1, 3)
    with pytest.raises(ValueError, match=r"shape \(B, T\) = \(1, 3\), got \(3,\)"):
        validate_key_padding_mask(np.ones(3, bool), 1, 3)
    cfg = AttentionConfig(d_in=4, d_out=4, n_heads=2, qkv_bias=True)
    p = init_params(AttentionConfig(d_in=4, d_out=4, n_heads=2))
    with pytest.raises(ValueError, match="b_q is missing"):
        p.check(cfg)
    with pytest.raises(ValueError, match="W_q has shape"):
        Params(np.zeros((4, 3)), p.W_k, p.W_v, p.W_o, p.b_o).check(AttentionConfig(d_in=4, d_out=4, n_heads=2))


def test_init_follows_nn_linear_bounds():
    cfg = AttentionConfig(d_in=16, d_out=64, n_heads=4, qkv_bias=True)
    p = init_params(cfg, seed=3)
    assert np.abs(p.W_q).max() <= 1 / 4 and np.abs(p.W_o).max() <= 1 / 8 and np.abs(p.b_q).max() <= 1 / 4
    assert np.abs(p.W_q).max() > 0.24  # fills the range, not a narrower distribution
    assert not np.array_equal(p.W_q, p.W_k)


# -- oracles nobody here wrote (these two tests need torch; the spec tests above do not) ----
def _torch():
    return pytest.importorskip("torch", reason="torch is not installed: the torch oracles need it")


@pytest.mark.parametrize("seed", range(6))
def test_matches_torch_multihead_attention_in_float64(seed):
    torch = _torch()
    rng = np.random.default_rng(seed)
    H = int(rng.integers(1, 4))
    d = H * int(rng.integers(1, 6))
    B, T = int(rng.integers(1, 4)), int(rng.integers(1, 9))
    causal = bool(seed % 2)
    cfg = AttentionConfig(d_in=d, d_out=d, n_heads=H, causal=causal, qkv_bias=True)
    p = init_params(cfg, seed)
    x = rng.standard_normal((B, T, d))
    kpm = rng.random((B, T)) > 0.2
    kpm[:, 0] = True  # nn.MultiheadAttention gives NaN for rows with no key; the spec gives 0
    mha = torch.nn.MultiheadAttention(d, H, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.from_numpy(np.concatenate([p.W_q, p.W_k, p.W_v])))
        mha.in_proj_bias.copy_(torch.from_numpy(np.concatenate([p.b_q, p.b_k, p.b_v])))
        mha.out_proj.weight.copy_(torch.from_numpy(p.W_o))
        mha.out_proj.bias.copy_(torch.from_numpy(p.b_o))
        mask = torch.from_numpy(np.triu(np.ones((T, T), bool), 1)) if causal else None
        xt = torch.from_numpy(x)
        ref, _ = mha(xt, xt, xt, key_padding_mask=torch.from_numpy(~kpm), attn_mask=mask, need_weights=False)
    np.testing.assert_allclose(forward(x, p, cfg, kpm), ref.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_matches_torch_sdpa_in_float64(seed):
    torch = _torch()
    F = torch.nn.functional
    rng = np.random.default_rng(100 + seed)
    H = int(rng.integers(1, 5))
    hd = int(rng.integers(1, 9))
    d_in = int(rng.integers(1, 12))
    B, T = int(rng.integers(1, 4)), int(rng.integers(1, 17))
    causal = seed % 2 == 0
    cfg = AttentionConfig(d_in=d_in, d_out=H * hd, n_heads=H, causal=causal)
    p = init_params(cfg, seed)
    x = rng.standard_normal((B, T, d_in)) * 2
    t = {k: torch.from_numpy(v) for k, v in p.arrays().items()}
    xt = torch.from_numpy(x)
    q, k, v = ((xt @ t[w].T).view(B, T, H, hd).transpose(1, 2) for w in ("W_q", "W_k", "W_v"))  # (B, H, T, hd)
    ctx = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, T, hd)
    ref = ctx.transpose(1, 2).reshape(B, T, H * hd) @ t["W_o"].T + t["b_o"]
    np.testing.assert_allclose(forward(x, p, cfg), ref.numpy(), rtol=0, atol=1e-12)
