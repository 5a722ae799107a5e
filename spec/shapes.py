"""Shape contracts of the twelve steps, as data the suite can evaluate.

`SHAPES[step]` lists each output's shape in symbols; `expected_shapes(step, config, B, T)`
turns them into numbers, so a test can ask "what shape must step 7 return for this config?".
"""

from __future__ import annotations

from spec.config import AttentionConfig

#: Step -> the shape of each output, in the symbols of the source document's tables.
SHAPES: dict[int, tuple[tuple[str, ...], ...]] = {
    1: (("B", "T", "d_in"),),
    2: ((),),  # head_dim, a scalar
    3: (("d_out", "d_in"), ("d_out", "d_in"), ("d_out", "d_in"), ("d_out", "d_out"), ("d_out",)),
    4: (("B", "T", "d_out"),) * 3,
    5: (("B", "T", "H", "head_dim"),),
    6: (("B", "H", "T", "head_dim"),),
    7: (("B", "H", "T", "T"),),
    8: (("B", "H", "T", "T"),),
    9: (("B", "H", "T", "head_dim"),),
    10: (("B", "T", "H", "head_dim"),),
    11: (("B", "T", "d_out"),),
    12: (("B", "T", "d_out"),),
}


def symbols(config: AttentionConfig, B: int, T: int) -> dict[str, int]:
    """The value of every shape symbol for one configuration and input size."""
    return {"B": B, "T": T, "d_in": config.d_in, "d_out": config.d_out,
            "H": config.n_heads, "head_dim": config.head_dim}


def expected_shapes(step: int, config: AttentionConfig, B: int, T: int) -> tuple[tuple[int, ...], ...]:
    """The concrete shape of each output of `step` (1..12)."""
    if step not in SHAPES:
        raise ValueError(f"step must be 1..12, got {step!r}")
    env = symbols(config, B, T)
    return tuple(tuple(env[s] for s in shape) for shape in SHAPES[step])


def expected_shape(step: int, config: AttentionConfig, B: int, T: int) -> tuple[int, ...]:
    """The shape of the first (for most steps, only) output of `step`."""
    return expected_shapes(step, config, B, T)[0]
