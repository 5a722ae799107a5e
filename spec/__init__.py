"""The executable specification of multi-head self-attention: the twelve steps in float64 NumPy.

Read `spec/steps.py` beside docs/spec-decisions.md; `spec/table.py` is the step
table (each step's inputs, outputs and shapes), `spec/block.py` composes the steps,
`spec/backward.py` holds each step's backward (VJP) and `spec.block.grads` composes them,
`spec/cache.py` runs them as KV-cache decoding (prefill, then decode over the cached K and V),
`spec/shapes.py` evaluates the shape contracts and `spec/invariants.py` holds the invariants.
"""

from spec.backward import Grads
from spec.block import attend, forward, grads, intermediates, qkv_heads, sample_dropout_mask
from spec.cache import Cache, decode, prefill
from spec.config import FLOAT_DTYPES, AttentionConfig, numpy_dtype, validate_input
from spec.params import Params, init_params
from spec.shapes import expected_shape, expected_shapes
from spec.table import STEPS, Step, Trace

__all__ = [
    "FLOAT_DTYPES", "AttentionConfig", "numpy_dtype", "validate_input", "forward", "grads", "Grads",
    "intermediates", "sample_dropout_mask", "Params", "init_params",
    "expected_shape", "expected_shapes", "STEPS", "Step", "Trace", "attend", "qkv_heads", "Cache",
    "prefill", "decode",
]
