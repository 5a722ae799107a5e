"""The semantic profile's bias and sink columns: what a fully masked row gives, per library.

Two library columns, measured on each library's own attention (`libraries.Raw`, nothing an
adapter corrects), and one through the contract:

- "fully masked row, float bias -1e9": a query row whose every key is pushed down by a float
  bias of -1e9 (the additive masks Hugging Face builds from finfo.min, and SDPA's float
  `attn_mask`) instead of masked. A finite bias is a score: the softmax is uniform over the row,
  so the row gets the mean of V, where a boolean mask gives the spec's zeros. SDPA and
  nn.MultiheadAttention take the float mask; the spec's rows measure step 8 on scores lowered by
  -1e9 (the arithmetic a bias array in `AttentionConfig.bias` is).
- "fully masked row with a sink": every key padded, sinks of 0 in each head: the spec gives
  zeros (the sink takes the row's whole weight and has no value). Libraries whose signature has no
  sink argument are "not offered".
- through the contract ("ALiBi slopes", contract only): a declared bias, 4 heads through the
  forward, against the standard slopes, the slopes reversed and no bias.

The peers (`peer_libraries.py`): JAX's `bias=` and the ONNX operator's float `attn_mask` take the
-1e9 bias (`float_bias`); flax's module call has no bias argument (`no_bias`, read from its
signature); none of the three has a sink argument (`no_modifier("sink")`, read from the signature
or the operator's schema), so their sink rows read "not offered" (the jax and onnxruntime adapters
emulate a sink as a zero key: the contract's row measures that).
The library probes take the probes module's helpers as an argument (`h`: inputs, reference,
_call, _closest, entry), and the contract probe the contract's `measured`: no import circle.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spec.config import AttentionConfig

COLUMNS: tuple[tuple[str, str], ...] = (
    ("bias_masked_row", "fully masked row, float bias -1e9"),
    ("sink_masked_row", "fully masked row with a sink"),
)
CONTRACT_ONLY: tuple[tuple[str, str], ...] = (("alibi", "ALiBi slopes, through the contract"),)
#: The bias the first column passes on every key of the probed row.
BIG = -1e9


def _candidates(q: np.ndarray, k: np.ndarray, v: np.ndarray, h: Any) -> dict[str, np.ndarray]:
    """The fully masked row's candidates for q [1, H, 1, hd], k, v [1, H, Tk, hd]: zeros; the mean of
    V (uniform weights: -1e9 + s rounds to -1e9 in float32, ulp 64 there); the row's own softmax
    (a constant added to a whole row changes no weight, where the dtype keeps the scores apart)."""
    return {"zeros": np.zeros_like(v[:, :, :1]), "mean of V (uniform weights)": v.mean(axis=2, keepdims=True),
            "as if unmasked": h.reference(q, k, v)}


def _found(out: np.ndarray | None, q, k, v, h: Any) -> str:
    if out is None:
        return "other"
    out = np.asarray(out, dtype=np.float64)[:, :, :1]  # (1, H, 1, hd): the probed row
    if np.isnan(out).any():
        return "NaN"
    return h._closest(out, _candidates(q, k, v, h)) or "other"


def bias_masked_row(raw: Any, h: Any) -> dict[str, str]:
    """1 query over 4 keys, 2 heads, every key's score lowered by 1e9 (a float bias), in float32 (a
    model's dtype: HF's additive masks are finfo.min of it)."""
    q, k, v = h.inputs(1, 2, 1, 4, 4, seed=40)
    name = getattr(raw, "name", "")
    if name in ("numpy", "torch"):  # step 8 on scores 1e9 lower: what a float bias of -1e9 makes of them
        b = raw.backend()
        cfg = AttentionConfig(d_in=8, d_out=8, n_heads=2, causal=False)
        Q, K, V = (b.from_numpy(a.astype(np.float32), "float32") for a in (q, k, v))
        scores = b.attn_scores(Q, K)
        lowered = scores + b.from_numpy(np.full((1, 2, 1, 4), BIG * 2.0, np.float32), "float32")  # * sqrt(hd): -1e9 scaled
        out, err = h._call(lambda: b.to_numpy(b.context(b.attn_weights(lowered, cfg), V)))
        how = "step 8 on scores lowered by 1e9 after the scale (what a bias array of -1e9 adds)"
    elif name in ("torch-sdpa", "torch-mha"):
        out, err = h._call(lambda: _torch_float_mask(raw, q, k, v))
        how = "a float attn_mask of -1e9 on every key"
    elif callable(getattr(raw, "float_bias", None)):  # the peers: JAX's bias=, ONNX's float attn_mask
        out, err = h._call(lambda: raw.float_bias(q, k, v, np.full((1, 2, 1, 4), BIG, np.float32)))  # (B, H, Tq, Tk)
        how = raw.float_bias_how
    elif callable(getattr(raw, "no_bias", None)) and raw.no_bias():
        return h.entry("not offered", raw.no_bias())
    else:
        return h.entry("not probed", f"no float-bias probe for {name or 'this library'} this round")
    if err:
        return h.entry("raises", f"{how}: {err}")
    found = _found(out, q, k, v, h)
    return h.entry(found, f"{how}, float32: {found} (a boolean mask gives the spec's zeros; a finite bias is "
                               f"a score)")


def _torch_float_mask(raw: Any, q, k, v) -> np.ndarray:
    import torch

    bias = torch.full((1, q.shape[2], k.shape[2]), BIG, dtype=torch.float32)  # (1, Tq, Tk)
    if raw.name == "torch-sdpa":
        import torch.nn.functional as F

        t = [torch.from_numpy(a.astype(np.float32)) for a in (q, k, v)]
        return F.scaled_dot_product_attention(*t, attn_mask=bias[:, None]).double().numpy()  # (1, H, Tq, hd)
    B, H, Tq, hd = q.shape
    mha = raw.module(H * hd, H, "float32")
    x = [torch.from_numpy(a.transpose(0, 2, 1, 3).reshape(B, a.shape[2], H * hd).astype(np.float32)) for a in (q, k, v)]
    with torch.no_grad():
        out, _ = mha(*x, attn_mask=bias[0], need_weights=False)  # (Tq, Tk) float: added to the scores
    return out.reshape(B, Tq, H, hd).permute(0, 2, 1, 3).double().numpy()


def sink_masked_row(raw: Any, h: Any) -> dict[str, str]:
    """1 query over 4 keys, 2 heads, every key padded, a sink of 0 in each head, float64."""
    q, k, v = h.inputs(1, 2, 1, 4, 4, seed=41)
    name = getattr(raw, "name", "")
    if name in ("numpy", "torch"):
        b = raw.backend()
        cfg = AttentionConfig(d_in=8, d_out=8, n_heads=2, causal=False, sinks=(0.0, 0.0))
        Q, K, V = (b.from_numpy(a, "float64") for a in (q, k, v))
        kpm = b.from_numpy(np.zeros((1, 4), dtype=bool))
        out, err = h._call(lambda: b.to_numpy(b.context(b.attn_weights(b.attn_scores(Q, K), cfg,
                                                                            key_padding_mask=kpm), V)))
        if err:
            return h.entry("raises", f"sinks of 0, every key padded: {err}")
        found = _found(out, q, k, v, h)
        return h.entry(found, f"sinks of 0 (AttentionConfig.sinks), every key padded: {found} (the spec: zeros)")
    if callable(getattr(raw, "no_modifier", None)):  # torch-sdpa, torch-mha and the peers
        why = raw.no_modifier("sink")  # read from the library's signature (the ONNX operator's schema)
        if why:
            return h.entry("not offered", why)
    return h.entry("not probed", f"no sink probe for {name or 'this library'} this round")


def contract_alibi(backend: Any, measured: Any) -> tuple[str, str]:
    """Declared bias: ALiBi over 4 heads through the forward (`measured`: the contract's `_measured`),
    against the slopes reversed and no bias."""
    from conformance.findings import probes as fp
    from conformance.suite.strategies import case_from
    from conformance.mutants.bias import AlibiSlopesReversed
    from spec import block

    if not backend.capabilities.bias:
        return "n/a", "score biases not declared (Capabilities.bias is False)"
    dtype = fp.probe_dtype(backend)
    config = AttentionConfig(d_in=8, d_out=8, n_heads=4, causal=backend.capabilities.causal, bias="alibi")
    case = case_from(config, 1, 9, dtype, seed=42, x_scale=0.5)
    got, err = measured(backend, "ALiBi probe", lambda r: r.forward(case), dtype)
    if err:
        return "raises", err
    x, params = case.x.astype(np.float64), case.params.map(lambda a: a.astype(np.float64))
    want = {"standard (the spec)": block.forward(x, params, config),
            "no bias": block.forward(x, params, AttentionConfig(d_in=8, d_out=8, n_heads=4, causal=config.causal))}
    mutant = AlibiSlopesReversed()  # the reversed slopes' forward, computed in float64 by the mutant
    want["slopes in reverse head order"] = mutant.forward(x, mutant.prepare(params, "float64"), config)
    found = fp._match(got, want, dtype)
    return found or "other", f"bias='alibi', 4 heads, T = 9: {found or 'matches no candidate'}"
