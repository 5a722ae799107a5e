"""Shape contracts of the twelve steps, evaluated from the step table (spec/table.py).

`expected_shapes(step, config, B, T)` turns the table's symbolic shapes into numbers, so a
test can ask "what shape must step 7 return for this config?". With `Tk` given, queries and
keys differ in length (Tq = T queries over Tk keys, as in KV-cache decoding).
"""

from __future__ import annotations

from spec.config import AttentionConfig
from spec.table import step

def symbols(config: AttentionConfig, B: int, T: int, Tk: int | None = None) -> dict[str, int]:
    """The value of every shape symbol for one configuration and input size."""
    return {"B": B, "Tq": T, "Tk": T if Tk is None else Tk, "d_in": config.d_in, "d_out": config.d_out,
            "H": config.n_heads, "head_dim": config.head_dim, "Hkv": config.kv_heads, "d_kv": config.d_kv}


def expected_shapes(n: int, config: AttentionConfig, B: int, T: int,
                    Tk: int | None = None) -> tuple[tuple[int, ...], ...]:
    """The concrete shape of each output of step n (1..12)."""
    env = symbols(config, B, T, Tk)
    return tuple(tuple(env[s] for s in shape) for shape in step(n).shapes)


def expected_shape(n: int, config: AttentionConfig, B: int, T: int, Tk: int | None = None) -> tuple[int, ...]:
    """The shape of the first (for most steps, only) output of step n."""
    return expected_shapes(n, config, B, T, Tk)[0]
