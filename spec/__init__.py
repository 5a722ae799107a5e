"""The executable specification of multi-head self-attention: the twelve steps in float64 NumPy.

Read `spec/steps.py` beside the README's "The spec's decisions"; `spec/table.py` is the step
table (each step's inputs, outputs and shapes), `spec/block.py` composes the steps,
`spec/backward.py` holds each step's backward (VJP) and `spec.block.grads` composes them,
`spec/shapes.py` evaluates the shape contracts and `spec/invariants.py` holds the invariants.
"""

from spec.backward import Grads
from spec.block import forward, grads, intermediates, sample_dropout_mask
from spec.config import FLOAT_DTYPES, AttentionConfig, numpy_dtype, validate_input
from spec.params import Params, init_params
from spec.shapes import SHAPES, expected_shape, expected_shapes
from spec.table import STEPS, Step, Trace

__all__ = [
    "FLOAT_DTYPES", "AttentionConfig", "numpy_dtype", "validate_input", "forward", "grads", "Grads",
    "intermediates", "sample_dropout_mask", "Params", "init_params", "SHAPES",
    "expected_shape", "expected_shapes", "STEPS", "Step", "Trace",
]
