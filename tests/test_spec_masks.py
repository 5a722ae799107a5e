"""spec.masks.visible, the one attention mask, and the head split/merge and matmul the spec exports."""

from __future__ import annotations

import numpy as np
import pytest

from spec import steps as S
from spec.masks import causal_mask, visible


@pytest.mark.parametrize("Tq,Tk", [(1, 1), (5, 5), (1, 7), (3, 7)])
def test_causal_is_bottom_right_aligned(Tq, Tk):
    v = visible(Tq, Tk, causal=True)
    assert v.shape == (1, 1, Tq, Tk)
    for i in range(Tq):
        assert v[0, 0, i].tolist() == [j <= i + Tk - Tq for j in range(Tk)]
    assert np.array_equal(v[0, 0], ~causal_mask(Tq, Tk))
    if Tq == Tk:  # the source document's triu(ones, diagonal=1) masks the future
        assert np.array_equal(~v[0, 0], np.triu(np.ones((Tq, Tk), bool), 1))


def test_not_causal_sees_everything_and_padding_masks_whole_keys():
    kpm = np.array([[True, False, True], [False, False, False]])
    v = visible(2, 3, causal=False, key_padding_mask=kpm)
    assert v.shape == (2, 1, 2, 3)
    assert v[0, 0].tolist() == [[True, False, True]] * 2
    assert not v[1].any()  # a row with every key padded sees nothing
    assert visible(2, 3, causal=False).all()


@pytest.mark.parametrize("left,right", [(0, 0), (1, 0), (2, 0), (2, 1), (0, 3)])
@pytest.mark.parametrize("Tq,Tk", [(6, 6), (3, 6), (1, 6)])
def test_window_left_right_is_counted_in_key_positions_from_the_last_queries(left, right, Tq, Tk):
    """(left, right): the query at position p = i + Tk - Tq sees p - left <= j <= p + right; left = w
    covers w + 1 keys (itself and the w before), FlashAttention's window_size=(w, 0)."""
    v = visible(Tq, Tk, causal=False, window=(left, right))[0, 0]
    for i in range(Tq):
        p = i + Tk - Tq
        assert v[i].tolist() == [p - left <= j <= p + right for j in range(Tk)]
    causal = visible(Tq, Tk, causal=True, window=(left, 0))[0, 0]
    assert causal.sum(-1).tolist() == [min(left + 1, i + Tk - Tq + 1) for i in range(Tq)]  # w + 1 keys once far enough in
    assert np.array_equal(visible(Tq, Tk, True, window=(left, right))[0, 0], causal)  # causal cuts the right side
    assert np.array_equal(visible(Tq, Tk, True, window=(Tk, 0))[0, 0], visible(Tq, Tk, True)[0, 0])  # wide: no effect


def test_a_decode_query_sees_the_left_window_before_it():
    v = visible(1, 10, causal=True, window=(3, 0))[0, 0, 0]  # one new token at position 9
    assert np.flatnonzero(v).tolist() == [6, 7, 8, 9]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", (1,), (-1, 0), (1, 2.0), (True, 0)])
def test_a_bad_window_names_the_value_and_what_is_valid(bad):
    with pytest.raises(ValueError, match=r"window=.*must be \(left, right\), two ints >= 0"):
        visible(2, 2, True, window=bad)
    from spec.config import AttentionConfig

    with pytest.raises(ValueError, match=r"window=.*must be \(left, right\)"):
        AttentionConfig(4, 4, 1, window=bad)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), "5", True])
def test_a_bad_softcap_names_the_value_and_what_is_valid(bad):
    from spec.config import AttentionConfig

    with pytest.raises(ValueError, match=r"softcap must be a finite number > 0"):
        AttentionConfig(4, 4, 1, softcap=bad)


def test_the_step_8_mask_is_visible():
    from spec.config import AttentionConfig

    config = AttentionConfig(d_in=4, d_out=4, n_heads=2, causal=True)
    kpm = np.array([[True, True, False, True]])
    w = S.attn_weights(np.random.default_rng(0).standard_normal((1, 2, 2, 4)), config, kpm)
    assert np.array_equal(w > 0, np.broadcast_to(visible(2, 4, True, kpm), w.shape))


def test_heads_and_merge_heads_are_steps_5_6_and_10_11():
    a = np.arange(2 * 3 * 12, dtype=np.float64).reshape(2, 3, 12)  # (B, T, H * hd)
    h = S.heads(a, 4)
    assert h.shape == (2, 4, 3, 3) and h[1, 2, 0].tolist() == a[1, 0, 6:9].tolist()
    assert np.array_equal(S.merge_heads(h), a)


def test_matmul_keeps_the_inputs_dtype():
    a = np.ones((2, 3), np.float16)
    assert S.matmul(a, np.ones((3, 2), np.float16)).dtype == np.float16
