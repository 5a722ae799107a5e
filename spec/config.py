"""The configuration of one multi-head self-attention block, and input validation.

Steps 1 and 2 of the source document fix the sizes: the input is `[B, T, d_in]`, and
`d_out` is split into `n_heads` heads of `head_dim = d_out // n_heads`. Every invalid value is
a `ValueError` that names the value and says what would be valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from spec.masks import check_window
from spec.scores import BiasArray, check_bias, check_sinks

#: Float dtypes the spec knows, by name. bfloat16 comes from ml_dtypes in NumPy.
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a positive integer, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


@dataclass(frozen=True)
class AttentionConfig:
    """Sizes and options of one multi-head self-attention block.

    d_in: input features per token (step 1). d_out: total output features, split into
    n_heads heads (step 2). causal: query i attends to keys j <= i (the source document's
    mask); False is the encoder mode. qkv_bias: biases on W_q, W_k, W_v (the output
    projection always has one, as `nn.Linear(d_out, d_out)` in step 12). dropout_p: dropout
    probability on the attention weights, in [0, 1). n_kv_heads: how many K/V heads (grouped-
    query attention); it divides n_heads, query head h reads K/V head h // (n_heads // n_kv_heads)
    (consecutive groups); 1 is multi-query attention, None (the default) means n_heads, and
    n_kv_heads = n_heads is stored as None. `kv_heads` is the resolved count.
    window: a sliding window (left, right), two ints >= 0: the query at position p (with Tq < Tk
    the queries are the last Tq positions) sees keys p - left <= j <= p + right; left = w covers
    w + 1 keys; None (the default) is no window (spec/masks.py). softcap: c > 0 applies
    c * tanh(s / c) to the scaled scores before any mask (Gemma 2); None (the default) is none.
    bias: "alibi" adds slope_h * (j - p) to the scaled (capped) scores before the masks, with
    ALiBi's standard slopes for n_heads heads (spec/scores.py); a float array broadcastable to
    [B, H, Tq, Tk] (kept as a `spec.scores.BiasArray`) is added there as it is, and its gradient
    is Grads.dbias (no KV cache: it covers one call's Tq, Tk); None (the default) is none.
    sinks: one logit per head (n_heads floats, each finite or -inf), an extra term in the softmax's
    denominator with no value (gpt-oss): a row's weights then sum to less than one; None (the
    default) is none. docs/bias-and-sinks.md has worked examples.
    """

    d_in: int
    d_out: int
    n_heads: int
    causal: bool = True
    qkv_bias: bool = False
    dropout_p: float = 0.0
    n_kv_heads: int | None = None
    window: tuple[int, int] | None = None
    softcap: float | None = None
    bias: str | BiasArray | None = None
    sinks: tuple[float, ...] | None = None
    head_dim: int = field(init=False)

    def __post_init__(self) -> None:
        _positive_int("d_in", self.d_in)
        _positive_int("d_out", self.d_out)
        _positive_int("n_heads", self.n_heads)
        if self.d_out % self.n_heads != 0:
            divisors = [h for h in range(1, self.d_out + 1) if self.d_out % h == 0]
            raise ValueError(
                f"d_out={self.d_out} is not divisible by n_heads={self.n_heads}; "
                f"n_heads must divide d_out (valid: {divisors})"
            )
        for name in ("causal", "qkv_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        p = self.dropout_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 <= p < 1.0) or math.isnan(p):
            raise ValueError(f"dropout_p must be a number in [0, 1), got {p!r}")
        object.__setattr__(self, "head_dim", self.d_out // self.n_heads)
        if self.n_kv_heads is not None:
            _positive_int("n_kv_heads", self.n_kv_heads)
            if self.n_heads % self.n_kv_heads != 0:
                divisors = [h for h in range(1, self.n_heads + 1) if self.n_heads % h == 0]
                raise ValueError(
                    f"n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}; "
                    f"n_kv_heads must divide n_heads (valid: {divisors})"
                )
            # None is the one spelling of ordinary attention: equal configs compare equal, and
            # dataclasses.replace(config, n_heads=...) of an ungrouped config stays ungrouped
            object.__setattr__(self, "n_kv_heads", None if self.n_kv_heads == self.n_heads else int(self.n_kv_heads))
        object.__setattr__(self, "window", check_window(self.window))
        c = self.softcap
        if c is not None:
            if isinstance(c, bool) or not isinstance(c, (int, float, np.floating)) or not (0 < c < math.inf):
                raise ValueError(f"softcap must be a finite number > 0 (scores become c * tanh(s / c)) or None, got {c!r}")
            object.__setattr__(self, "softcap", float(c))
        object.__setattr__(self, "bias", check_bias(self.bias))
        object.__setattr__(self, "sinks", check_sinks(self.sinks, self.n_heads))

    @property
    def kv_heads(self) -> int:
        """The number of K/V heads, Hkv: n_kv_heads, or n_heads when None (ordinary attention)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def group(self) -> int:
        """Query heads per K/V head: n_heads // kv_heads (1 for ordinary attention)."""
        return self.n_heads // self.kv_heads

    @property
    def d_kv(self) -> int:
        """Columns of the K and V projections: kv_heads * head_dim (d_out when ungrouped)."""
        return self.kv_heads * self.head_dim

    def to_dict(self) -> dict:
        return {
            "d_in": self.d_in,
            "d_out": self.d_out,
            "n_heads": self.n_heads,
            "causal": self.causal,
            "qkv_bias": self.qkv_bias,
            "dropout_p": self.dropout_p,
            # only when grouped, so ordinary configs read and write exactly as before
            **({"n_kv_heads": self.n_kv_heads} if self.n_kv_heads is not None else {}),
            **({"window": list(self.window)} if self.window is not None else {}),
            **({"softcap": self.softcap} if self.softcap is not None else {}),
            **({"bias": self.bias if isinstance(self.bias, str) else
                {"shape": list(self.bias.shape), "values": self.bias.array.ravel().tolist()}}
               if self.bias is not None else {}),
            # -inf as a string: results.json is strict JSON
            **({"sinks": [s if math.isfinite(s) else "-inf" for s in self.sinks]} if self.sinks is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "AttentionConfig":
        return cls(**{k: d[k] for k in ("d_in", "d_out", "n_heads", "causal", "qkv_bias", "dropout_p")},
                   n_kv_heads=d.get("n_kv_heads"),
                   window=None if d.get("window") is None else tuple(d["window"]), softcap=d.get("softcap"),
                   bias=_bias_from(d.get("bias")), sinks=None if d.get("sinks") is None else tuple(float(s) for s in d["sinks"]))


def _bias_from(b: object) -> object:
    """to_dict's bias back: a name, None, or {"shape", "values"} as a BiasArray."""
    if isinstance(b, dict):
        return BiasArray(np.asarray(b["values"], dtype=np.float64).reshape(b["shape"]))
    return b


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype for a float dtype name; bfloat16 through ml_dtypes."""
    if name not in FLOAT_DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(FLOAT_DTYPES)}")
    if name == "bfloat16":
        import ml_dtypes  # lazily: only bfloat16 needs it

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def dtype_name(dtype: object) -> str:
    """The spec's name for a NumPy dtype (or anything whose str() is a dtype name)."""
    name = str(np.dtype(dtype)) if not isinstance(dtype, str) else dtype
    return name


def validate_input(x: np.ndarray, config: AttentionConfig) -> None:
    """Step 1's contract: x is a float array of shape [B, T, d_in] with B, T >= 1."""
    if getattr(x, "ndim", None) != 3:
        raise ValueError(
            f"x must have rank 3 [B, T, d_in], got shape {getattr(x, 'shape', None)}"
        )
    if dtype_name(x.dtype) not in FLOAT_DTYPES and np.dtype(x.dtype).kind != "f":  # kind f: long double too
        raise ValueError(f"x must be a float array ({', '.join(FLOAT_DTYPES)}), got dtype {x.dtype}")
    B, T, d_in = x.shape
    if B < 1 or T < 1:
        raise ValueError(f"x must have B >= 1 and T >= 1, got shape {x.shape}")
    if d_in != config.d_in:
        raise ValueError(f"x has d_in={d_in} features but the config says d_in={config.d_in}")


def validate_key_padding_mask(mask: np.ndarray | None, B: int, T: int) -> None:
    """The key padding mask is boolean [B, T]; True marks a key that may be attended to."""
    if mask is None:
        return
    if getattr(mask, "dtype", None) != np.bool_:
        raise ValueError(f"key_padding_mask must be boolean (True = may attend), got dtype {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.shape != (B, T):
        raise ValueError(f"key_padding_mask must have shape (B, T) = {(B, T)}, got {mask.shape}")
