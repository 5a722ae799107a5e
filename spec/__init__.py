"""The executable specification of multi-head self-attention: the twelve steps in float64 NumPy.

Read `spec/steps.py` beside the source document; `spec/forward.py` composes the steps,
`spec/shapes.py` holds the shape contracts as data and `spec/invariants.py` the invariants.
"""

from spec.block import forward, intermediates, sample_dropout_mask
from spec.config import FLOAT_DTYPES, AttentionConfig, numpy_dtype, validate_input
from spec.params import Params, init_params
from spec.shapes import SHAPES, expected_shape, expected_shapes
from spec.steps import STEPS

__all__ = [
    "FLOAT_DTYPES", "AttentionConfig", "numpy_dtype", "validate_input", "forward",
    "intermediates", "sample_dropout_mask", "Params", "init_params", "SHAPES",
    "expected_shape", "expected_shapes", "STEPS",
]
