"""JAX as a backend: `jax.nn.dot_product_attention` with the spec's projections around it.

A real peer, not code written here. Steps 4-6 and 10-12 are jnp lines (x @ W.T + b, one
reshape to JAX's [B, T, N, H] layout, one reshape back); steps 7-9 are one
`jax.nn.dot_product_attention` call (XLA implementation on the CPU). The whole forward is
one `jax.jit` per (shape, dtype, options): op-by-op dispatch compiles every primitive for
every new shape and was 5x slower here (0.9-1.5 s per new shape against 0.15-0.25 s).
float16 and bfloat16 are the exception (EAGER_DTYPES): under jit, XLA's CPU compiler
rejects the F16_F16_F32 / BF16_BF16_F32 dot algorithms dot_product_attention requests.

How the spec's decisions are expressed with JAX's own options:
- key padding mask: `mask=` is boolean with True = take part, the spec's polarity, so the
  [B, Tk] mask goes in as [B, 1, 1, Tk] unchanged;
- causal: `is_causal=True`. The suite's forward has Tq == Tk, where top-left and
  bottom-right alignment agree; the semantic profile shows how JAX aligns when Tq < Tk;
- scale: JAX's default, 1/sqrt(head_dim) (the spec's; measured by the profile);
- sliding window: `local_window_size=(left, right)`, query i sees keys i - left .. i + right,
  the spec's window when Tq == Tk (JAX aligns it top-left when Tq < Tk, as `is_causal`;
  the profile measures both); no softcap: `dot_product_attention` has no such argument;
- grouped K/V heads: K and V go in with their n_kv_heads heads ([B, T, Hkv, hd]); JAX reads
  query head h against K/V head h // group, the spec's consecutive groups (the profile measures it);
- score bias (ALiBi or a bias array): `bias=`, 4-D in the dtype under test, added to the scaled
  scores before the masks (the spec's order; JAX's head axis must be 1 or H, as the spec's is);
- sinks: no sink argument. One more key with k = v = 0 whose `bias=` column is the sink logit
  (`impls.peer_scores`): its score is the logit, it joins the denominator, adds nothing to the
  context. With Tk = Tq + 1 JAX's is_causal and local_window_size align top-left, so the causal,
  window and padding masks go in as one explicit boolean `mask=` (bottom-right, the sink's column
  True). A bias of -inf would make a fully masked row NaN in JAX's softmax (its masked logits are
  finite), so masking stays boolean and only the sink logit (possibly -inf) rides in the bias.

Corrected here, openly (see `Capabilities.notes`): a query with no attendable key. JAX's XLA
implementation gives it a uniform average of V (the masked logits are a large finite
negative number, not -inf); the spec says a zero context, so those rows are zeroed after the
call (with sinks they are already zero: the sink takes the row). No dropout and no gradients:
`dot_product_attention` has no dropout argument, and no backward is declared here.

Process-global state stays scoped: float64 needs JAX's x64 mode, switched on only inside
`jax.enable_x64(True)` around each conversion and call, so float32 work elsewhere in the
worker is not promoted. One thread per suite worker: when the suite asks for it
(OMP_NUM_THREADS=1, which XLA ignores), XLA_FLAGS gets XLA's own single-thread flags before
JAX is first imported.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import numpy as np

from impls.base import Backend, Capabilities, library_versions
from spec.config import AttentionConfig, dtype_name, numpy_dtype
from spec.params import Params

JAX_PINS = "jax==0.10.2 jaxlib==0.10.2"
PEERS_SWITCH = "MHA_WITH_PEERS=1 nox -s conformance"
JAX_DTYPES = ("float64", "float32", "float16", "bfloat16")
#: Run op by op, not under jax.jit: dot_product_attention asks for the F16_F16_F32 and
#: BF16_BF16_F32 dot algorithms, which XLA's CPU backend rejects when compiling (bfloat16 at
#: some shapes only: "Algorithm not supported by the ElementalIrEmitter"); only outside jit
#: does JAX's own fallback (a try/except around the einsum) catch that.
EAGER_DTYPES = ("float16", "bfloat16")
#: XLA's CPU thread pools ignore OMP_NUM_THREADS; these flags make XLA single-threaded.
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def one_thread_requested() -> bool:
    """The suite's request for one thread per worker (conformance.cli sets OMP_NUM_THREADS=1)."""
    return os.environ.get("OMP_NUM_THREADS") == "1"


def import_jax() -> Any:
    """`import jax`, with XLA limited to one thread first when the suite asks for that.

    XLA reads XLA_FLAGS once, when JAX starts its CPU backend; after that the flags have no
    effect, so they are set only if JAX is not imported yet.
    """
    if "jax" not in sys.modules and one_thread_requested():
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {XLA_ONE_THREAD}".strip()
    import jax

    return jax


def jax_missing(pins: str = JAX_PINS, module: str = "jax") -> str | None:
    """Why JAX (or `module`, e.g. flax) cannot be used here, or None when it imports."""
    for name in dict.fromkeys(("jax", module)):  # flax needs jax: name the first one missing
        try:
            import_jax() if name == "jax" else __import__(name)
        except ImportError as e:
            return f"{name} is not installed: {e} ({PEERS_SWITCH}, or pip install {pins})"
    return None


def x64(dtype: str | None) -> contextlib.AbstractContextManager:
    """JAX's x64 mode for float64 work only, scoped to a `with` block (never process-wide)."""
    jax = import_jax()
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def has_key(key_padding_mask: Any, Tq: int, causal: bool, window: tuple[int, int] | None = None) -> Any:
    """Bool [B, Tq]: True where query i has an attendable key (bottom-right causal and window, as the spec)."""
    import jax.numpy as jnp

    Tk = key_padding_mask.shape[-1]
    if window is not None:  # a padded window can be empty even when keys are kept elsewhere
        p = jnp.arange(Tq)[:, None] + Tk - Tq  # (Tq, 1): each query's key position
        j = jnp.arange(Tk)[None, :]  # (1, Tk)
        band = (j >= p - window[0]) & (j <= p + (0 if causal else window[1]))  # (Tq, Tk)
        return (key_padding_mask[:, None, :] & band).any(-1)  # (B, Tq)
    if not causal:
        return jnp.broadcast_to(key_padding_mask.any(-1, keepdims=True), (key_padding_mask.shape[0], Tq))
    seen = jnp.cumsum(key_padding_mask.astype(jnp.int32), -1) > 0  # (B, Tk): a kept key in 0..j
    return seen[:, Tk - Tq:]  # (B, Tq): query i sees keys up to i + Tk - Tq


class JaxEdges(Backend):
    """Conversions, availability and dtype checks shared by the JAX-based backends."""

    def availability(self) -> str | None:
        return jax_missing()

    def versions(self) -> dict[str, str]:
        return library_versions('jax', 'jaxlib')

    def check_dtype(self, dtype: str) -> None:
        if dtype not in self.capabilities.dtypes:
            raise ValueError(f"backend {self.name!r} does not compute in {dtype!r}; "
                             f"valid: {', '.join(self.capabilities.dtypes)}")

    def from_numpy(self, a: np.ndarray, dtype: str | None = None) -> Any:
        import jax.numpy as jnp

        a = np.asarray(a)
        name = dtype or dtype_name(a.dtype)
        if name in ("float64", "float32", "float16", "bfloat16"):
            a = a.astype(numpy_dtype(name))  # bfloat16: ml_dtypes, which JAX uses itself
        with x64(name):
            return jnp.array(a)  # a copy: the caller's array is never shared

    def to_numpy(self, a: Any) -> np.ndarray:
        return np.array(a)  # bfloat16 comes back as ml_dtypes.bfloat16

    def synchronize(self) -> None:
        """Nothing queued: forward blocks until its result is ready."""

    def prepare(self, params: Params, dtype: str) -> Params:
        self.check_dtype(dtype)
        return params.map(lambda a: self.from_numpy(a, dtype))


def _forward(x, W_q, W_k, W_v, W_o, b_o, b_q, b_k, b_v, kpm, bias=None, allowed=None, *, n_heads: int,
             causal: bool, window: tuple[int, int] | None = None, sink: bool = False):
    """Steps 4-12 on jnp arrays; jitted per shape, dtype and static options.

    bias: None or [b, H or 1, T, T] in x's dtype, JAX's `bias=` (ALiBi or a bias array). With sinks
    (`sink`): K and V get one more key of zeros, bias is [b, H, T, T + 1] with the sink logits as its
    last column, and `allowed` the explicit bool mask [b, 1, T, T + 1] (causal, window and padding,
    the sink's column True): JAX's is_causal and local_window_size align top-left when Tq != Tk, so
    with the extra key they are spelt out here, bottom-right as the spec."""
    import jax
    import jax.numpy as jnp

    B, T, _ = x.shape
    hd = W_q.shape[0] // n_heads
    q, k, v = x @ W_q.T, x @ W_k.T, x @ W_v.T  # q (B, T, d_out), k and v (B, T, d_kv)
    if b_q is not None:
        q, k, v = q + b_q, k + b_k, v + b_v
    q = q.reshape(B, T, n_heads, hd)  # (B, T, H, hd): JAX's BTNH
    k, v = (a.reshape(B, T, a.shape[-1] // hd, hd) for a in (k, v))  # (B, T, Hkv, hd): JAX groups consecutively
    if sink:  # the sink key: k = v = 0, its logit the bias's last column
        zero = jnp.zeros((B, 1) + k.shape[2:], k.dtype)  # (B, 1, Hkv, hd)
        k, v = jnp.concatenate([k, zero], 1), jnp.concatenate([v, zero], 1)  # (B, T + 1, Hkv, hd)
        ctx = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=allowed)  # (B, T, H, hd)
    else:
        mask = None if kpm is None else kpm[:, None, None, :]  # (B, 1, 1, Tk): True = take part
        # local_window_size=(left, right): query i sees keys i - left .. i + right, the spec's (left, right)
        # when Tq == Tk, as here (JAX aligns it top-left when Tq < Tk: the semantic profile measures it)
        ctx = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=causal,
                                           local_window_size=window)  # (B, T, H, hd)
    if kpm is not None:  # JAX: uniform average of V on a row with no key; spec: zero context
        ctx = jnp.where(has_key(kpm, T, causal, window)[:, :, None, None], ctx, jnp.zeros((), ctx.dtype))
    ctx = ctx.reshape(B, T, n_heads * hd)  # (B, T, d_out)
    return ctx @ W_o.T + b_o  # (B, T, d_out)


class JaxBackend(JaxEdges):
    name = "jax"
    capabilities = Capabilities(
        dtypes=JAX_DTYPES,
        device="cpu",
        key_padding_mask=True,
        qkv_bias=True,
        dropout="none",
        grouped_kv=True,  # K, V of n_kv_heads heads passed as they are: dot_product_attention groups consecutively
        # local_window_size=(left, right) is the spec's window when Tq == Tk (the forward's only case: no
        # KV cache here); no softcap argument (jax 0.10.2's dot_product_attention has none)
        window=True,
        bias=True,  # dot_product_attention's bias= (impls.peer_scores.bias_4d): added to the scaled scores
        sinks=True,  # a zero key and value, its bias column the sink logit; the masks then spelt out bottom-right
        notes="jax.nn.dot_product_attention (XLA) for steps 7-9; mask passed as is "
              "(its True = take part); rows with no attendable key zeroed after the call (JAX gives "
              "them the mean of V); its softmax runs in float32 for every dtype, float64 included; "
              "float16/bfloat16 run op by op (under jit XLA's CPU compiler rejects the F16_F16_F32 / "
              "BF16_BF16_F32 dots it asks for); float64/float32 under jax.jit; float64 inside a scoped jax.enable_x64; no dropout argument; "
              "the window as local_window_size=(left, right) (top-left when Tq < Tk, never sent: no KV cache); no softcap argument; "
              "ALiBi or a bias array as its bias= (4-D, in the dtype under test); no sink argument: sinks as one more "
              "key with k = v = 0 whose bias column is the sink logit, causal, window and padding then an explicit "
              "bool mask (is_causal aligns top-left once Tk = Tq + 1); no gradients (no backward declared).",
    )

    def __init__(self) -> None:
        self._jitted: dict[str, Any] = {}

    def forward(self, x: Any, weights: Params, config: AttentionConfig, *,
                key_padding_mask: Any = None, dropout_mask: Any = None,
                training: bool = False) -> Any:
        import jax

        if dropout_mask is not None or (training and config.dropout_p > 0):
            raise ValueError(f"backend {self.name!r} has no dropout (jax.nn.dot_product_attention takes "
                             f"no dropout argument); use training=False or dropout_p=0")
        if config.softcap is not None:  # never dropped silently (transformers #32309 dropped a softcap so)
            raise ValueError(f"backend {self.name!r} cannot softcap (softcap={config.softcap}): "
                             f"jax.nn.dot_product_attention has no softcap argument; valid: softcap=None")
        dtype = dtype_name(x.dtype)
        fn = _forward
        if dtype not in EAGER_DTYPES:
            if "jit" not in self._jitted:
                self._jitted["jit"] = jax.jit(_forward, static_argnames=("n_heads", "causal", "window", "sink"))
            fn = self._jitted["jit"]
        bias, allowed = self.score_terms(config, x.shape[1], key_padding_mask, dtype)
        w = weights
        with x64(dtype):
            out = fn(x, w.W_q, w.W_k, w.W_v, w.W_o, w.b_o, w.b_q, w.b_k, w.b_v,
                     key_padding_mask, bias, allowed, n_heads=config.n_heads, causal=config.causal,
                     window=None if config.window is None else tuple(config.window), sink=config.sinks is not None)
            return out.block_until_ready()

    def score_terms(self, config: AttentionConfig, T: int, key_padding_mask: Any, dtype: str) -> tuple[Any, Any]:
        """JAX's bias= in dtype (None without bias or sinks) and, with sinks, the explicit bool mask
        [b, 1, T, T + 1] (None without sinks): see `_forward`."""
        from impls import peer_scores as ps

        bias = ps.bias_4d(config, T, T)  # (b, H or 1, T or 1, T or 1), float64, or None
        if config.sinks is None:
            return (None if bias is None else self.from_numpy(bias, dtype)), None
        kpm = None if key_padding_mask is None else np.asarray(key_padding_mask)
        ok = ps.allowed(config, T, T, kpm)  # (b, 1, T, T + 1): the sink's key last, never masked
        return self.from_numpy(ps.with_sink_column(bias, config, T, T), dtype), self.from_numpy(ok)
