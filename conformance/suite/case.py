"""A test case: one configuration and its inputs, saved and loaded exactly for reproduction.

Values are float64 NumPy arrays already rounded to the dtype under test, so the backend,
the float64 golden and the plain reference in that dtype all start from the same numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from spec.config import AttentionConfig, numpy_dtype
from spec.params import Params

_PARAM_NAMES = tuple(f.name for f in fields(Params))


def round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    """Round float64 values to `dtype` and back: the exact numbers a backend in dtype sees."""
    return np.asarray(a, dtype=np.float64).astype(numpy_dtype(dtype)).astype(np.float64)


@dataclass(frozen=True, repr=False)
class Case:
    """Everything one property needs: config, dtype, inputs and check-specific extras."""

    config: AttentionConfig
    dtype: str
    x: np.ndarray  # (B, T, d_in), float64 holding dtype-representable values
    params: Params  # float64 holding dtype-representable values
    key_padding_mask: np.ndarray | None = None  # (B, T) bool, True = may attend
    dropout_mask: np.ndarray | None = None  # (B, H, T, T) bool, True = kept
    seed: int = 0  # the seed the values were drawn from (for the description)
    x_scale: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)  # per-check draws (split point, ...)

    @property
    def B(self) -> int:
        return self.x.shape[0]

    @property
    def T(self) -> int:
        return self.x.shape[1]

    def with_(self, **changes: Any) -> "Case":
        return replace(self, **changes)

    def __repr__(self) -> str:
        return f"Case({self.describe()})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """Hypothesis prints a dataclass field by field, the arrays' every value included (tens
        of kB for each explicit example it runs); it prints this one line instead."""
        p.text(repr(self))

    def describe(self) -> str:
        """A one-line, readable description: what a failure message shows as the example."""
        c = self.config
        parts = [f"B={self.B}", f"T={self.T}", f"d_in={c.d_in}", f"d_out={c.d_out}", f"H={c.n_heads}",
                 *([f"n_kv_heads={c.kv_heads}"] if c.kv_heads != c.n_heads else []),
                 f"head_dim={c.head_dim}", f"causal={c.causal}", f"qkv_bias={c.qkv_bias}",
                 f"dtype={self.dtype}", f"x_scale={self.x_scale:g}", f"seed={self.seed}"]
        if c.dropout_p:
            parts.append(f"dropout_p={c.dropout_p:g}")
        if c.window is not None:
            parts.append(f"window=({c.window[0]}, {c.window[1]})")
        if c.softcap is not None:
            parts.append(f"softcap={c.softcap:g}")
        if c.bias is not None:  # "alibi", or an array's shape (its values are in the saved .npz's config)
            parts.append(f"bias={c.bias if isinstance(c.bias, str) else 'x'.join(map(str, c.bias.shape))}")
        if c.sinks is not None:
            parts.append(f"sinks=({', '.join(f'{s:g}' for s in c.sinks)})")
        if self.key_padding_mask is not None and self.key_padding_mask.size <= 256:
            rows = ["".join("1" if v else "0" for v in row) for row in self.key_padding_mask]
            parts.append(f"key_padding_mask=[{', '.join(rows)}]")
        elif self.key_padding_mask is not None:  # large: the saved .npz holds the mask itself
            parts.append(f"key_padding_mask=({self.B}x{self.T}, {int(self.key_padding_mask.sum())} may attend)")
        if self.dropout_mask is not None:
            parts.append(f"dropout_mask(kept={int(self.dropout_mask.sum())}/{self.dropout_mask.size})")
        parts += [f"{k}={v}" for k, v in sorted(self.extra.items())]
        text = ", ".join(parts)
        if self.x.size <= 24:
            text += f"; x={np.array2string(self.x.ravel(), precision=4, separator=',', max_line_width=10**6)}"
        return text

    def save(self, path: Path, meta: dict[str, Any]) -> Path:
        """Save arrays and metadata to one .npz that `python -m conformance.repro` replays."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"x": self.x}
        arrays.update({f"param_{k}": v for k, v in self.params.arrays().items()})
        if self.key_padding_mask is not None:
            arrays["key_padding_mask"] = self.key_padding_mask
        if self.dropout_mask is not None:
            arrays["dropout_mask"] = self.dropout_mask
        head = {"config": self.config.to_dict(), "dtype": self.dtype, "seed": self.seed,
                "x_scale": self.x_scale, "extra": self.extra, **meta}
        arrays["meta"] = np.frombuffer(json.dumps(head, default=str).encode(), dtype=np.uint8)
        np.savez_compressed(path, **arrays)
        return path

    @classmethod
    def load(cls, path: Path) -> tuple["Case", dict[str, Any]]:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            params = Params(**{k: z[f"param_{k}"] for k in _PARAM_NAMES if f"param_{k}" in z.files})
            case = cls(config=AttentionConfig.from_dict(meta["config"]), dtype=meta["dtype"], x=z["x"],
                       params=params,
                       key_padding_mask=z["key_padding_mask"] if "key_padding_mask" in z.files else None,
                       dropout_mask=z["dropout_mask"] if "dropout_mask" in z.files else None,
                       seed=meta["seed"], x_scale=meta["x_scale"], extra=meta["extra"])
        return case, meta
