"""Implementations ("backends") checked against the spec, and the contract they satisfy.

`impls.base` is the contract, `impls.registry` resolves names, `module:attr` and entry points.
Each backend module imports its framework lazily, so importing `impls` needs only NumPy.
"""

from impls.base import Backend, Capabilities, exposed_steps, missing_parts

__all__ = ["Backend", "Capabilities", "exposed_steps", "missing_parts"]
