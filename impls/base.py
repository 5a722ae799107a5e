"""The backend contract: what an implementation provides so the suite can check and time it.

A backend is a small class (as einops' backends are). Required: `name`, `capabilities`,
`from_numpy`, `to_numpy` and `forward`. Optional: `availability` (why it cannot run here),
`synchronize` (for asynchronous devices), `prepare` (convert the weights once, outside the
timed call) and any of the twelve steps under the spec's names (`spec.steps.STEPS`), so the
suite can say which step is wrong. Frameworks are imported lazily, inside methods, never at
module import time: a missing library is a skip, not a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from spec import conventions as conv
from spec.config import FLOAT_DTYPES, AttentionConfig
from spec.params import Params
from spec.table import STEPS

DROPOUT_MODES = ("none", "replay", "rng")


def _hashable(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(a)) for k, a in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(a) for a in v)
    return v


@dataclass(frozen=True)
class Capabilities:
    """What a backend declares it supports; the suite checks exactly that and no more.

    dtypes: float dtype names it computes in (`spec.FLOAT_DTYPES`). device: where it runs
    ("cpu", "cuda", ...). causal / non_causal: the two masking modes. key_padding_mask:
    accepts a boolean [B, T] mask, True = may attend. qkv_bias: accepts biases on Q, K, V.
    dropout: "none"; "replay" (accepts an explicit keep mask, so its dropout is replayed
    exactly); or "rng" (only its own random stream, checked statistically).
    d_in_equals_d_out: only configurations with d_in == d_out (as `nn.MultiheadAttention`).
    max_tokens: the largest T it accepts, if limited. deterministic: same inputs, same bits.
    kv_cache: defines `prefill` and `decode` (KV-cache decoding, see `Backend.prefill`);
    cache_arrays: also `cache_kv`, so the suite checks the cache's K and V against the spec's.
    gradients: provides `forward_for_grad` and `backward` (the block's gradients).
    grouped_kv: grouped-query attention, any n_kv_heads dividing n_heads (1 = multi-query):
    W_k, W_v (and b_k, b_v) come with n_kv_heads * head_dim rows, query head h reads K/V head
    h // (n_heads // n_kv_heads), and `cache_kv` returns [B, n_kv_heads, t, head_dim]. Without
    it the suite only draws n_kv_heads = n_heads.
    batch_invariant: a promise, checked bit for bit: a sequence's output bits do not depend on
    the rest of its batch (run alone, or in the batch shuffled). Most kernels pick their tiling
    or split-K by shape, so none of the built-ins makes it; declare it only if you guarantee it.
    layout_invariant: a promise, checked bit for bit: the output bits do not depend on the
    inputs' memory layout (transposed, sliced, negative or zero strides, as `from_numpy` carries
    them); without it a laid-out run is held to the tolerance model only. Measured for the
    built-ins in docs/layouts.md.
    non_finite_masked_inputs: a promise: NaN and +-inf in the inputs the spec says cannot matter
    (padded tokens' inputs; under causal attention, later tokens' inputs for the earlier rows)
    leave every other row as with clean inputs: a masked key contributes nothing even when its
    score or value is not finite (a select, never 0 x NaN). Checked with NaN and +-inf there
    (`poisoned_positions_ignored`); the suite never cleans the inputs up. None of the built-ins
    keeps it (measured: the semantic profile's "non-finite masked inputs" column).
    decode_invariant: a promise, checked bit for bit: decoding token by token after a prefill
    (`kv_cache`) gives the bits of the full causal forward at those positions. Kernels that
    compute one query row differently from a block of rows (GEMV against GEMM, split-KV decoding)
    break it; none of the built-ins keeps it (measured, `python -m conformance.tools.bitwise_survey`).
    conventions: known, intended departures from the spec, from the fixed menu in
    `spec.conventions.MENU` (e.g. `{"fully_masked_rows": "mean_v"}`): the suite judges
    everything else against the spec adjusted for them, and reports show them beside the verdict.
    window: a sliding window `AttentionConfig.window = (left, right)`: the query at position p
    (the last Tq of Tk keys) sees keys p - left .. p + right, so (2, 0) covers 3 keys, itself and
    the 2 before (FlashAttention's window_size=(2, 0); JAX's sliding_window_length=3).
    softcap: `AttentionConfig.softcap = c`: the scaled scores s become c * tanh(s / c) before any
    mask (Gemma 2's attn_logit_softcapping, FlashAttention's softcap; c = 50 bounds every score
    to (-50, 50)). Without them the suite draws neither.
    bias: `AttentionConfig.bias = "alibi"`: slope_h * (j - p) added to the scaled (capped) scores
    before the masks, ALiBi's standard slopes (8 heads: 1/2, 1/4, ..., 1/256); query 5 of a causal
    row then scores key 3 with -2 * slope_h more than without (spec/scores.py); and a bias array
    (`spec.scores.BiasArray`, broadcastable to [B, H, Tq, Tk]) added there, with gradients
    `backward` returning dbias in its shape (summed over the axes it was broadcast on).
    sinks: `AttentionConfig.sinks = (s_0, ..., s_{H-1})`: one logit per head in the softmax's
    denominator only (gpt-oss); a row whose scores are all 0 over 3 keys with sink log(3) gets
    weights 1/6 each; a row with no visible key gets 0. With gradients, backward returns dsinks [H].
    Without them the suite draws neither.
    """

    dtypes: tuple[str, ...] = ("float64", "float32")
    device: str = "cpu"
    causal: bool = True
    non_causal: bool = True
    key_padding_mask: bool = False
    qkv_bias: bool = True
    dropout: str = "none"
    d_in_equals_d_out: bool = False
    max_tokens: int | None = None
    deterministic: bool = True
    kv_cache: bool = False
    cache_arrays: bool = False
    gradients: bool = False
    grouped_kv: bool = False
    window: bool = False
    softcap: bool = False
    bias: bool = False
    sinks: bool = False
    batch_invariant: bool = False
    layout_invariant: bool = False
    non_finite_masked_inputs: bool = False
    decode_invariant: bool = False
    conventions: dict[str, str] = field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        bad = [d for d in self.dtypes if d not in FLOAT_DTYPES]
        if bad or not self.dtypes:
            raise ValueError(f"Capabilities.dtypes has {bad or 'nothing'}; valid: {', '.join(FLOAT_DTYPES)}")
        if self.dropout not in DROPOUT_MODES:
            raise ValueError(f"Capabilities.dropout={self.dropout!r}; valid: {', '.join(DROPOUT_MODES)}")
        if not (self.causal or self.non_causal):
            raise ValueError("Capabilities must support causal or non_causal attention (or both)")
        if self.cache_arrays and not self.kv_cache:
            raise ValueError("Capabilities.cache_arrays=True needs kv_cache=True (cache_kv reads the cache)")
        if self.decode_invariant and not (self.kv_cache and self.causal):
            raise ValueError("Capabilities.decode_invariant=True needs kv_cache=True and causal=True "
                             "(it compares causal decoding with the forward)")
        object.__setattr__(self, "conventions", conv.validate(self.conventions or {}))

    def __hash__(self) -> int:
        # frozen, but `conventions` is a dict (and a list may stand for a tuple): hashed by value, so
        # the strategies built for these capabilities are found again (conformance.suite.reused);
        # computed once (each draw looks strategies up by it: 1.4 s of a worker's float32 checks)
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple(_hashable(getattr(self, f.name)) for f in fields(self)))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict[str, Any]:
        # str hashes differ between processes: a pickled copy computes its own
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    def unsupported(self, config: AttentionConfig, T: int | None = None,
                    key_padding_mask: bool = False, dropout: bool = False) -> str | None:
        """Why this configuration is outside the declared capabilities, or None if it is inside."""
        if config.causal and not self.causal:
            return "causal attention is not supported"
        if not config.causal and not self.non_causal:
            return "non-causal attention is not supported"
        if config.qkv_bias and not self.qkv_bias:
            return "qkv_bias is not supported"
        if config.kv_heads != config.n_heads and not self.grouped_kv:
            return (f"grouped K/V heads are not supported (n_kv_heads={config.kv_heads} < "
                    f"n_heads={config.n_heads}; declare Capabilities.grouped_kv)")
        if config.window is not None and not self.window:
            return f"sliding windows are not supported (window={config.window}; declare Capabilities.window)"
        if config.softcap is not None and not self.softcap:
            return f"logit softcapping is not supported (softcap={config.softcap}; declare Capabilities.softcap)"
        if config.bias is not None and not self.bias:
            return f"score biases are not supported (bias={config.bias!r}; declare Capabilities.bias)"
        if config.sinks is not None and not self.sinks:
            return f"attention sinks are not supported (sinks={config.sinks}; declare Capabilities.sinks)"
        if key_padding_mask and not self.key_padding_mask:
            return "key padding masks are not supported"
        if dropout and self.dropout == "none":
            return "dropout is not supported"
        if self.d_in_equals_d_out and config.d_in != config.d_out:
            return f"requires d_in == d_out, got d_in={config.d_in}, d_out={config.d_out}"
        if T is not None and self.max_tokens is not None and T > self.max_tokens:
            return f"T={T} exceeds max_tokens={self.max_tokens}"
        return None

    def unmet(self, needs: tuple[str, ...]) -> str | None:
        """Why a check that needs these (`NEEDS`' names) is unsupported here, or None: the one
        place that turns a check's needs into a reason."""
        for need in needs:
            if need not in NEEDS:
                raise ValueError(f"unknown need {need!r}; valid: {', '.join(NEEDS)}")
            holds, reason = NEEDS[need]
            if not holds(self):
                return reason(self) if callable(reason) else reason
        return None

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, dict) else v)
                for k, v in self.__dict__.items()}


#: What a check may need of a backend's declared capabilities, and the reason when it is not there.
#: A new capability is one field above and one entry here.
NEEDS: dict[str, tuple[Any, Any]] = {
    "causal": (lambda c: c.causal, "causal attention is not supported"),
    "non_causal": (lambda c: c.non_causal, "non-causal attention is not supported"),
    "key_padding_mask": (lambda c: c.key_padding_mask, "key padding masks are not supported"),
    "deterministic": (lambda c: c.deterministic, "declared non-deterministic"),
    "dropout": (lambda c: c.dropout != "none", "dropout is not supported"),
    "dropout_replay": (lambda c: c.dropout == "replay", lambda c: f"dropout={c.dropout!r}: no explicit keep mask to replay"),
    "gradients": (lambda c: c.gradients, "gradients not declared (Capabilities.gradients)"),
    "grad_replay": (lambda c: c.dropout == "replay",
                    lambda c: f"dropout={c.dropout!r}: the backend's own keep mask is not visible, so whether backward "
                              f"replays it cannot be compared with the spec (a statistical check cannot tell a replayed "
                              f"mask from a redrawn one with the same p)"),
    "maskable": (lambda c: c.causal or c.key_padding_mask,
                 "neither causal attention nor key padding masks: no position the spec says cannot matter"),
    "grouped_kv": (lambda c: c.grouped_kv, "grouped K/V heads not declared (Capabilities.grouped_kv)"),
    "batch_invariant": (lambda c: c.batch_invariant,
                        "batch invariance not declared (Capabilities.batch_invariant): outputs may differ in "
                        "the last bits with what else is in the batch, as most kernels' do"),
    "decode_invariant": (lambda c: c.decode_invariant,
                         "decode invariance not declared (Capabilities.decode_invariant): decoding may differ "
                         "from the forward in the last bits, as most kernels' does"),
    "window": (lambda c: c.window, "sliding windows not declared (Capabilities.window)"),
    "softcap": (lambda c: c.softcap, "logit softcapping not declared (Capabilities.softcap)"),
    "bias": (lambda c: c.bias, "score biases (ALiBi) not declared (Capabilities.bias)"),
    "sinks": (lambda c: c.sinks, "attention sinks not declared (Capabilities.sinks)"),
    "kv_cache": (lambda c: c.kv_cache, "KV-cache decoding not declared (Capabilities.kv_cache)"),
    "cache_arrays": (lambda c: c.cache_arrays, "cache not exposed (Capabilities.cache_arrays)"),
}


class Backend:
    """Base class with the optional parts filled in; subclass it and override what you have.

    The suite calls, in this order: `availability()`; `prepare(params, dtype)` and
    `from_numpy` on inputs (untimed); `forward(...)` then `synchronize()` (timed);
    `to_numpy` on the result (untimed). Step methods, when defined, take and return native
    arrays exactly as the spec's functions of the same name do with NumPy arrays.
    """

    name: str = ""
    capabilities: Capabilities = Capabilities()

    def availability(self) -> str | None:
        """None if this backend can run on this machine; otherwise the reason it cannot."""
        return None

    def from_numpy(self, a: np.ndarray, dtype: str | None = None) -> Any:
        """Convert a NumPy array to the native type; `dtype` names the float dtype (None: keep)."""
        raise NotImplementedError

    def to_numpy(self, a: Any) -> np.ndarray:
        """Convert a native array back to NumPy (bfloat16 may come back as float32)."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued device work to finish; a no-op on synchronous backends."""

    def versions(self) -> dict[str, str]:
        """The libraries this backend computes with, name -> version (e.g. {"torch": "2.13.0"}),
        recorded with the run (results.json) so a report says what was tested. Read them without
        importing the framework: `library_versions("torch")`. Default: none reported."""
        return {}

    def prepare(self, params: Params, dtype: str) -> Any:
        """Convert float64 NumPy parameters to whatever `forward` and the steps take."""
        return params.map(lambda a: self.from_numpy(a, dtype))

    def forward(self, x: Any, weights: Any, config: AttentionConfig, *,
                key_padding_mask: Any = None, dropout_mask: Any = None,
                training: bool = False) -> Any:
        """Steps 1-12: x [B, T, d_in] -> [B, T, d_out], in x's dtype.

        key_padding_mask [B, T] bool, True = may attend. dropout_mask [B, H, T, T] bool,
        True = kept (only for dropout="replay"). training=True without a mask asks for the
        backend's own random dropout at config.dropout_p (dropout="rng" or "replay").
        """
        raise NotImplementedError

    # -- KV-cache decoding (optional; declared by Capabilities.kv_cache) -------------------
    # prefill(x, weights, config, *, key_padding_mask=None) -> cache
    #     the prompt x [B, t, d_in]; the cache is opaque to the suite (any object).
    # decode(x_new, cache, weights, config, *, key_padding_mask=None) -> (y_new, cache')
    #     n >= 1 new tokens x_new [B, n, d_in] -> y_new [B, n, d_out] in x_new's dtype, the
    #     new queries attending over the t cached tokens and the new ones, causal aligned
    #     bottom-right (new token i is position t + i); key_padding_mask [B, n] covers the new
    #     tokens only: the earlier tokens' padding lives in the cache. With causal=False a
    #     decode step's n new queries see every unpadded cached token and all n new tokens,
    #     the later ones in the chunk too (no causal mask; only a single chunk after the
    #     prompt equals forward on the whole sequence). decode must leave the cache it is
    #     given unchanged and usable, as the spec's does (it returns a new one): the check
    #     decode_branches_from_one_cache decodes two continuations from one cache, and the
    #     decode bench times decode on one cache again and again.
    #     dtype: the cache holds K and V in the dtype of the prompt x (the dtype under test,
    #     never widened or narrowed), and decode gets x_new in that same dtype.
    # cache_kv(cache) -> (K, V)  (Capabilities.cache_arrays)
    #     native arrays [B, n_kv_heads, t, head_dim] in the prompt's dtype (checked): each K/V head's
    #     keys and values, as spec.cache.Cache (n_kv_heads = H unless grouped; never repeated per query head).
    # -- gradients (optional; declare Capabilities(gradients=True)) -------------------------
    def forward_for_grad(self, x: Any, weights: Any, config: AttentionConfig, *,
                         key_padding_mask: Any = None, dropout_mask: Any = None,
                         training: bool = False) -> tuple[Any, Any]:
        """forward's output and `saved`: whatever `backward` needs (autograd's graph, or a fused
        kernel's own residuals such as the softmax's log-sum-exp). Same arguments as forward."""
        raise NotImplementedError

    def backward(self, saved: Any, grad_out: Any) -> Any:
        """The gradients of sum(grad_out * out) for the `saved` of one forward_for_grad call.

        Returns a `spec.block.Grads`, or a mapping with its field names (dx, dW_q, dW_k, dW_v,
        dW_o, db_o; db_q, db_k, db_v when qkv_bias; dsinks [H] when config.sinks), native arrays in
        x's dtype, in the spec's
        parameter layout (W_q as [d_out, d_in], ...) whatever the backend packs internally.
        Step VJPs (optional) are named as in the step table, `<step>_vjp` (spec.backward).
        """
        raise NotImplementedError


def library_versions(*dists: str) -> dict[str, str]:
    """Installed versions of the distributions `dists` (importlib.metadata: nothing imported);
    the ones not installed are left out."""
    from importlib import metadata

    out = {}
    for d in dists:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            pass
    return out


#: The block's gradients by name, as `backward` returns them (spec.block.Grads' fields).
GRAD_NAMES = ("dx", "dW_q", "dW_k", "dW_v", "dW_o", "db_o", "db_q", "db_k", "db_v", "dsinks", "dbias")


def exposed_vjps(backend: object) -> tuple[int, ...]:
    """The step numbers whose VJPs (`<step>_vjp`) the backend defines, in order."""
    return tuple(n for n, s in STEPS.items() if s.vjp is not None and callable(getattr(backend, s.vjp.__name__, None)))


REQUIRED = ("name", "capabilities", "from_numpy", "to_numpy", "forward")


def _defined(obj: object, attr: str) -> bool:
    """True when obj has `attr` and it is not the base class's unimplemented placeholder."""
    value = getattr(type(obj), attr, None) if not isinstance(obj, type) else getattr(obj, attr, None)
    if value is None:
        value = getattr(obj, attr, None)
    if value is None:
        return False
    base = getattr(Backend, attr, None)
    return not (base is not None and value is base and attr in ("from_numpy", "to_numpy", "forward"))


def missing_parts(obj: object) -> list[str]:
    """The parts of the contract that `obj` lacks, by name (empty when it is complete)."""
    missing = [attr for attr in REQUIRED if not _defined(obj, attr)]
    if "name" not in missing and not (isinstance(obj.name, str) and obj.name):
        missing.append("name (a non-empty string)")
    caps = getattr(obj, "capabilities", None)
    if "capabilities" not in missing and not isinstance(caps, Capabilities):
        missing.append(f"capabilities (an impls.Capabilities, got {type(caps).__name__})")
    return missing


def exposed_steps(backend: object) -> tuple[int, ...]:
    """The step numbers whose functions the backend defines, in order."""
    return tuple(n for n, s in STEPS.items() if n >= 3 and callable(_lookup(backend, s.name)))


def _lookup(backend: object, name: str) -> object:
    """getattr(backend, name, None), also when a __getattr__ raises something other than
    AttributeError for a name it does not have: such a name is not a method it defines."""
    try:
        return getattr(backend, name, None)
    except Exception:
        return None


@dataclass
class BackendInfo:
    """A resolved backend and where it came from, for reports."""

    backend: Any
    spec: str
    source: str  # "builtin", "module:attr" or "entry point"
    skip_reason: str | None = None  # availability() gave a reason: this machine lacks something
    error: str | None = None  # availability() raised or returned something else: the backend's failure
