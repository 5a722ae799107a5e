"""Long-double matmul through float64 BLAS: the float64 golden's products, 5x to 20x faster.

When float64 is under test, the golden runs the spec in long double (x86's 64-bit significand,
`conformance.suite.reference`). NumPy has no long-double BLAS: its matmul is an unblocked loop,
and it was most of the golden's time. `matmul_longdouble` gets the product from float64 BLAS
instead, at least as accurately (Ozaki's error-free splitting):

1. a = ah + al exactly, ah = a rounded to float64 and al the 11 bits float64 dropped (likewise b).
2. ah = a1 + a2: a1 holds each row's leading `bits` bits, as integers times a power of two per
   row (b1: per column), with k * 2^(2 * bits) <= 2^53. Every product a1[i, l] * b1[l, j] is then
   an integer times the same power of two, and so is every partial sum: a1 @ b1 is exact in
   float64 whatever order BLAS sums in.
3. a @ b = a1 @ b1 + a1 @ (b2 + bl) + (a2 + al) @ bh + (a2 + al) @ bl. The first term is
   exact; the next two are 2^-bits of the whole, so float64's rounding of them costs about
   2^-(53 + bits) of sum |a| |b|; the last (2^-(53 + bits)) is left out. The two parts are added
   in long double. The unblocked loop's own rounding is about sqrt(k) * 2^-64 of sum |a| |b|: for
   k up to 2^12 (bits >= 20) this is as accurate or better (tests/test_precise.py measures both
   against exact rational arithmetic). The split's bound is relative to the row's and column's
   largest entries rather than to each term: an entry 2^-73 below its row's largest counts for
   nothing, which no comparison sees (they scale by the output's largest value).

Non-finite inputs (a poisoned position's NaN), and lines whose largest entry is outside float64's
comfortable range (long double reaches past 1e308 and below 1e-308), take NumPy's loop.
"""

from __future__ import annotations

import numpy as np

#: True where long double is wider than float64 (x86's 80-bit format); elsewhere it is float64
#: itself and NumPy's matmul already uses BLAS.
WIDER = np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant
#: Below this reduction length the loop is cheaper than splitting: with k = 8 and a 300 x 300
#: output the split took 3x the loop's time (its passes over the output dominate); at k = 16
#: they were even (one BLAS thread, 2-core machine, 2026-12-06).
MIN_K = 24
#: The split's range: line maxima between these keep a, its parts and k of their products
#: normal and finite in float64 (2^-900: a unit 2^-bits below stays normal; 2^500: k products
#: of two such maxima stay finite).
SAFE_MIN, SAFE_MAX = np.longdouble(2.0 ** -900), np.longdouble(2.0 ** 500)


def _split(a: np.ndarray, axis: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 a = a1 + a2 exactly: a1 the leading `bits` bits relative to the largest |a| along
    `axis` (an integer times a power of two shared along it), a2 the rest."""
    top = np.max(np.abs(a), axis=axis, keepdims=True)
    _, e = np.frexp(top)  # top < 2^e (0 where the line is all zeros)
    unit = np.ldexp(1.0, e - bits)  # a1 is a multiple of unit, |a1| <= 2^e
    a1 = np.rint(a / unit) * unit  # a / unit and back are exact: powers of two
    return a1, a - a1  # the difference is exact: both are on unit's grid or finer


def _in_range(a: np.ndarray, axis: int) -> bool:
    """Every line's largest |a| is 0 or inside float64's comfortable range: long double's wider
    exponents (an exp far past 1e308, a product far below 1e-308) would overflow the split to
    inf, or its unit to 0 or a subnormal (then inexact)."""
    top = np.max(np.abs(a), axis=axis)
    return bool(np.isfinite(top).all() and ((top == 0) | ((top > SAFE_MIN) & (top < SAFE_MAX))).all())


def matmul_longdouble(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b for long-double a [..., m, k] and b [..., k, n], in long double (module docstring)."""
    k = a.shape[-1]
    if not WIDER or k < MIN_K or not (_in_range(a, -1) and _in_range(b, -2)):
        return np.matmul(a, b)  # also non-finite inputs: IEEE's answer, from NumPy's loop
    bits = (53 - (k - 1).bit_length()) // 2  # k * 2^(2 * bits) <= 2^53
    ah, bh = a.astype(np.float64), b.astype(np.float64)
    al, bl = (a - ah).astype(np.float64), (b - bh).astype(np.float64)  # exact: at most 11 bits each
    a1, a2 = _split(ah, -1, bits)  # per row of a
    b1, b2 = _split(bh, -2, bits)  # per column of b
    exact = np.matmul(a1, b1)
    # the rest, 2^-bits of the whole: float64 rounds each of these sums (a2 + al, b2 + bl) and
    # products at 2^-53 of their size; (a2 + al) @ bl, 2^-(53 + bits) of the whole, is left out
    rest = np.matmul(a1, b2 + bl) + np.matmul(a2 + al, bh)
    return exact.astype(np.longdouble) + rest.astype(np.longdouble)
