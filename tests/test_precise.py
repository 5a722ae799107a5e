"""The references' matmuls without BLAS of their own dtype: float16 through float32, long double
through split float64 (spec/precise.py), each as accurate as NumPy's own loop."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from spec.precise import MIN_K, WIDER, matmul_longdouble
from spec.steps import matmul


def _exact(x: np.longdouble) -> Fraction:
    """A long double as the rational number it is (64-bit significand)."""
    m, e = np.frexp(x)
    return Fraction(int(np.ldexp(m, 64))) * Fraction(2) ** (int(e) - 64)


def _worst_relative_error(r: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """max |r - a @ b| / (|a| @ |b|), a @ b in exact rational arithmetic."""
    scale = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    worst = Fraction(0)
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            exact = sum(_exact(a[i, l]) * _exact(b[l, j]) for l in range(a.shape[1]))
            worst = max(worst, abs(_exact(r[i, j]) - exact) / Fraction(float(scale[i, j])))
    return float(worst)


def _full_precision(shape: tuple[int, ...], rng: np.random.Generator, spread: float) -> np.ndarray:
    """Long doubles using all 64 significand bits, magnitudes spread over e^-spread..e^spread."""
    a = (rng.standard_normal(shape) * np.exp(rng.uniform(-spread, spread, shape))).astype(np.longdouble)
    return a * (1 + np.longdouble(2.0 ** -60) * rng.standard_normal(shape).astype(np.longdouble))


@pytest.mark.skipif(not WIDER, reason="long double is float64 on this platform: NumPy's matmul already uses BLAS")
@pytest.mark.parametrize("k", [MIN_K, 64, 700, 4096])
def test_long_double_matmul_at_least_as_accurate_as_numpys_loop(k):
    rng = np.random.default_rng(k)
    a, b = _full_precision((2, k), rng, 5.0), _full_precision((k, 2), rng, 1.0)
    split = _worst_relative_error(matmul_longdouble(a, b), a, b)
    loop = _worst_relative_error(np.matmul(a, b), a, b)
    # about 2^-(53 + bits) (bits >= 20 up to k = 4096); the loop's about sqrt(k) 2^-64
    assert split <= max(loop, 2.0 ** -64), (split, loop)
    assert split < 2.0 ** -63


@pytest.mark.skipif(not WIDER, reason="long double is float64 on this platform")
def test_long_double_matmul_batched_and_non_finite():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 3, 5, 40)).astype(np.longdouble)
    b = rng.standard_normal((2, 3, 40, 6)).astype(np.longdouble)
    got = matmul(a, b)
    assert got.dtype == np.longdouble and got.shape == (2, 3, 5, 6)
    assert np.max(np.abs(got - np.matmul(a, b))) < 1e-17
    a[0, 1, 2, 3] = np.nan  # a poisoned input: IEEE's answer, as NumPy's loop gives it
    got = matmul(a, b)
    assert np.isnan(got[0, 1, 2]).all() and np.isfinite(got[0, 1, :2]).all()
    zeros = matmul(np.zeros((4, 30), np.longdouble), b[0, 0, :30])  # an all-zero row splits to zeros
    assert not zeros.any()
    # past float64's range (long double's exp goes on past 1e308): NumPy's loop, not inf or NaN
    huge = rng.standard_normal((3, 40)).astype(np.longdouble) * np.exp(np.longdouble(800))
    tiny = rng.standard_normal((3, 40)).astype(np.longdouble) * np.exp(np.longdouble(-800))
    for a_ in (huge, tiny):
        got = matmul(a_, b[0, 0])
        assert np.isfinite(got).all() and np.array_equal(got, np.matmul(a_, b[0, 0]))


def test_float16_matmul_gives_numpys_numbers_up_to_the_order_of_float32_sums():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 2, 33, 70)).astype(np.float16)
    b = rng.standard_normal((3, 2, 70, 45)).astype(np.float16)
    got, numpys = matmul(a, b), np.matmul(a, b)
    assert got.dtype == np.float16
    # Both accumulate in float32 and round once to float16; BLAS and NumPy's loop add in other
    # orders, so an element may round the other way where the exact sum is within float32's
    # accumulation error of a float16 rounding tie (3 of 8910 here on one AMD EPYC, none on an
    # earlier machine), and then by one float16 ulp, never more.
    exact = np.matmul(a.astype(np.float64), b.astype(np.float64))
    bound = 70 * np.finfo(np.float32).eps * (np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)))
    differ = got != numpys
    assert differ.sum() <= 0.01 * got.size
    ulp = np.spacing(np.abs(numpys[differ]))
    assert np.all(np.abs(got[differ].astype(np.float64) - numpys[differ]) <= ulp)
    n = np.abs(numpys[differ])  # the ties on either side of NumPy's value, exact in float64
    up = (n.astype(np.float64) + np.nextafter(n, np.float16(np.inf))) / 2
    down = (n.astype(np.float64) + np.nextafter(n, np.float16(0))) / 2
    near = np.minimum(np.abs(np.abs(exact[differ]) - up), np.abs(np.abs(exact[differ]) - down))
    assert np.all(near <= bound[differ]), (near, bound[differ])
    # and each is float16's rounding of a float32 sum: the exactly rounded value or its neighbour
    assert np.all(np.abs(got.astype(np.float64) - exact) <= np.spacing(np.abs(got)).astype(np.float64) / 2 + bound)
