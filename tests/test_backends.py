"""The built-in backends against the spec: whole block, every exposed step, dropout replay.

CPU backends run here; torch ones skip (with the reason) when torch is not installed. The
CUDA backends (torch-cuda, torch-sdpa-cuda, cupy) are checked for what they declare and for
the reason they give on a machine without a GPU.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import spec
from impls.base import exposed_steps
from impls.registry import resolve
from spec import steps as S
from spec.table import STEPS, call_args

REPO = Path(__file__).resolve().parent.parent
CPU_BACKENDS = ("numpy", "torch", "torch-sdpa", "torch-mha")
GPU_BACKENDS = ("torch-cuda", "torch-sdpa-cuda", "cupy")
TORCH_BACKENDS = {"torch", "torch-sdpa", "torch-mha"}
TOL = {"float64": 1e-10, "float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}  # loose: dtype plumbing only

CONFIGS = [  # (B, T, d_in, d_out, H, causal, qkv_bias)
    (2, 5, 16, 16, 4, True, False),
    (3, 7, 16, 16, 2, False, True),
    (1, 9, 24, 24, 3, True, True),
    (2, 6, 12, 16, 4, True, False),  # d_in != d_out: torch-mha declares it unsupported
]


@pytest.fixture(scope="module", params=CPU_BACKENDS)
def backend(request):
    if request.param in TORCH_BACKENDS:
        pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    info = resolve(request.param)
    assert info.skip_reason is None, f"{request.param} cannot run here: {info.skip_reason}"
    return info.backend


def make_case(B, T, d_in, d_out, H, causal, qkv_bias, seed=0, dropout_p=0.0):
    config = spec.AttentionConfig(d_in=d_in, d_out=d_out, n_heads=H, causal=causal, qkv_bias=qkv_bias,
                                  dropout_p=dropout_p)
    params = spec.init_params(config, seed=seed)
    x = np.random.default_rng(seed + 100).standard_normal((B, T, d_in))
    return config, params, x


def padding_mask(B, T, seed=0):
    """A random keep mask with one batch row whose first keys are all padded.

    With causal attention the first queries of that row see no key at all (a fully masked
    row); without it, the last batch row is entirely padded.
    """
    kpm = np.random.default_rng(seed).random((B, T)) > 0.3
    kpm[0, :3] = False
    if B > 1:
        kpm[-1, :] = False
    return kpm


def run_forward(backend, config, params, x, dtype="float64", kpm=None, dropout_mask=None, training=False):
    w = backend.prepare(params, dtype)
    kw = {}
    if kpm is not None:
        kw["key_padding_mask"] = backend.from_numpy(kpm)
    if dropout_mask is not None:
        kw["dropout_mask"] = backend.from_numpy(dropout_mask)
    out = backend.forward(backend.from_numpy(x, dtype), w, config, training=training, **kw)
    backend.synchronize()
    return out


def skip_unless_supported(backend, config, T, kpm=False, dropout=False):
    why = backend.capabilities.unsupported(config, T, key_padding_mask=kpm, dropout=dropout)
    if why:
        pytest.skip(f"{backend.name}: {why} (declared capabilities)")


# -- whole block ---------------------------------------------------------------------------------
@pytest.mark.parametrize("padded", [False, True], ids=["no-padding", "padding"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "B{}T{}d{}-{}H{}-{}-{}".format(
    c[0], c[1], c[2], c[3], c[4], "causal" if c[5] else "full", "bias" if c[6] else "nobias"))
def test_forward_matches_spec_float64(backend, cfg, padded):
    config, params, x = make_case(*cfg)
    B, T = x.shape[:2]
    kpm = padding_mask(B, T) if padded else None
    skip_unless_supported(backend, config, T, kpm=padded)
    golden = spec.forward(x, params, config, key_padding_mask=kpm)
    assert np.isfinite(golden).all()
    got = backend.to_numpy(run_forward(backend, config, params, x, kpm=kpm))
    assert got.dtype == np.float64 and got.shape == golden.shape
    np.testing.assert_allclose(got, golden, rtol=0, atol=1e-10)


def test_fully_masked_query_rows_give_bias(backend):
    config, params, x = make_case(2, 6, 16, 16, 4, True, True)
    kpm = np.ones((2, 6), dtype=bool)
    kpm[0, :4] = False  # causal: queries 0..3 of batch 0 have no key
    kpm[1, :] = False   # batch 1: no query has a key
    skip_unless_supported(backend, config, 6, kpm=True)
    got = backend.to_numpy(run_forward(backend, config, params, x, kpm=kpm))
    assert np.isfinite(got).all(), "a fully masked query row gave NaN/inf"
    np.testing.assert_allclose(got[0, :4], np.broadcast_to(params.b_o, (4, 16)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got[1], np.broadcast_to(params.b_o, (6, 16)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got, spec.forward(x, params, config, key_padding_mask=kpm), rtol=0, atol=1e-10)


def test_dtype_preserved_and_close(backend):
    config, params, x = make_case(2, 7, 16, 16, 4, True, True)
    golden = spec.forward(x, params, config)
    for dtype in backend.capabilities.dtypes:
        out = run_forward(backend, config, params, x, dtype=dtype)
        got = backend.to_numpy(out)
        assert spec.config.dtype_name(got.dtype) == dtype, f"{dtype} in, {got.dtype} out"
        assert str(getattr(out, "dtype", "")).replace("torch.", "") == dtype  # the native result too
        np.testing.assert_allclose(got.astype(np.float64), golden, rtol=0, atol=TOL[dtype], err_msg=dtype)


def test_undeclared_dtype_is_refused_or_absent(backend):
    """A dtype the backend does not declare is refused with a ValueError naming it, or computed in it."""
    config, params, x = make_case(1, 4, 8, 8, 2, True, False)
    for dtype in set(spec.FLOAT_DTYPES) - set(backend.capabilities.dtypes):
        try:
            out = run_forward(backend, config, params, x, dtype=dtype)
        except ValueError as e:
            assert dtype in str(e), f"{backend.name} refused {dtype} without naming it: {e}"
            continue
        assert spec.config.dtype_name(backend.to_numpy(out).dtype) == dtype


def test_inputs_not_mutated_and_deterministic(backend):
    config, params, x = make_case(2, 9, 16, 16, 4, True, True)
    for dtype in ("float64", "float32"):
        w = backend.prepare(params, dtype)
        xn = backend.from_numpy(x, dtype)
        before = backend.to_numpy(xn).copy()
        a = backend.to_numpy(backend.forward(xn, w, config)).copy()
        b = backend.to_numpy(backend.forward(xn, w, config))
        np.testing.assert_array_equal(backend.to_numpy(xn), before)
        np.testing.assert_array_equal(a, b)


# -- the steps -----------------------------------------------------------------------------------
def call_step(backend, n, inter, config, w, kpm, dropout_mask=None):
    """(backend's step n on the spec's trace, the spec's output); steps 5 and 6 on V."""
    s = STEPS[n]
    tensor = 2 if s.per_tensor else 0  # V: Q and K take the same path
    args, kwargs = call_args(n, inter, config, kpm, weights=w, tensor=tensor, dropout_mask=dropout_mask)
    out = getattr(backend, s.name)(*(native(backend, a) for a in args),
                                   **{k: native(backend, v) for k, v in kwargs.items()})
    return out, inter[s.outputs[tensor]] if s.per_tensor else inter[n]


def native(backend, a):
    if isinstance(a, np.ndarray):
        return backend.from_numpy(a, None if a.dtype == np.bool_ else "float64")
    return a


@pytest.mark.parametrize("cfg", CONFIGS[:3], ids=["causal", "full-bias", "causal-bias"])
def test_exposed_steps_match_spec(backend, cfg):
    config, params, x = make_case(*cfg)
    B, T = x.shape[:2]
    kpm = padding_mask(B, T) if backend.capabilities.key_padding_mask else None
    inter = spec.intermediates(x, params, config, key_padding_mask=kpm)
    w = backend.prepare(params, "float64")
    steps = [n for n in exposed_steps(backend) if n >= 4]
    for n in steps:
        name = STEPS[n].name
        out, want = call_step(backend, n, inter, config, w, kpm)
        outs, wants = (out, want) if isinstance(want, tuple) else ((out,), (want,))
        assert len(outs) == len(wants), f"step {n} {name}"
        for o, g in zip(outs, wants):
            o = backend.to_numpy(o)
            assert o.shape == g.shape, f"step {n} {name}: shape {o.shape}, spec {g.shape}"
            np.testing.assert_allclose(o, g, rtol=0, atol=1e-10, err_msg=f"step {n} {name}")


@pytest.mark.parametrize("cfg", CONFIGS[:3], ids=["causal", "full-bias", "causal-bias"])
def test_forward_is_its_exposed_steps(backend, cfg):
    """The steps a backend exposes are the ones its forward runs: composing them (the spec's
    function for each step it does not expose) gives exactly its forward."""
    config, params, x = make_case(*cfg)
    B, T = x.shape[:2]
    kpm = padding_mask(B, T) if backend.capabilities.key_padding_mask else None
    exposed = [n for n in exposed_steps(backend) if n >= 4]
    if not exposed:
        pytest.skip(f"{backend.name} exposes no step from 4 to 12")
    w = backend.prepare(params, "float64")
    trace = {"x": backend.from_numpy(x, "float64"), "params": w}
    kw = {} if kpm is None else {"key_padding_mask": backend.from_numpy(kpm)}
    for n in range(4, 13):
        s = STEPS[n]
        if n in exposed:
            fn = getattr(backend, s.name)
        else:  # the spec's step on NumPy values, handed back as the backend's arrays
            def fn(*a, _f=s.fn, **k):
                out = _f(*(to_np(backend, v) for v in a), **{key: to_np(backend, v) for key, v in k.items()})
                return tuple(native(backend, o) for o in out) if isinstance(out, tuple) else native(backend, out)
        for tensor in (range(3) if s.per_tensor else (0,)):
            args, kwargs = call_args(n, trace, config, kw.get("key_padding_mask"), weights=w, tensor=tensor)
            out = fn(*args, **kwargs)
            names = (s.outputs[tensor],) if s.per_tensor else s.outputs
            trace.update(zip(names, out if len(names) > 1 else (out,)))
    composed = backend.to_numpy(trace["out"])
    whole = backend.to_numpy(backend.forward(trace["x"], w, config, **kw))
    np.testing.assert_allclose(composed, whole, rtol=0, atol=1e-12)


def to_np(backend, a):
    """A backend's array as NumPy; anything else (weights, config, ints) unchanged."""
    if isinstance(a, (int, float, spec.AttentionConfig)) or a is None or hasattr(a, "arrays"):
        return a
    return backend.to_numpy(a)


def test_init_params_follows_nn_linear(backend):
    if not callable(getattr(backend, "init_params", None)):
        pytest.skip(f"{backend.name} does not expose init_params")
    config = spec.AttentionConfig(d_in=24, d_out=32, n_heads=4, qkv_bias=True)
    p = backend.init_params(config, 7)
    p.check(config)
    for name, a in p.arrays().items():
        assert isinstance(a, np.ndarray) and a.dtype == np.float64, name
        bound = 1 / np.sqrt(config.d_out if name in ("W_o", "b_o") else config.d_in)
        assert np.abs(a).max() <= bound and np.abs(a).max() > 0.9 * bound, name
        assert abs(a.mean()) < 5 * bound / np.sqrt(3 * a.size), name  # 5 sigma of U(-a, a)
    np.testing.assert_array_equal(backend.init_params(config, 7).W_q, p.W_q)  # seeded
    assert not np.array_equal(backend.init_params(config, 8).W_q, p.W_q)
    assert backend.init_params(replace(config, qkv_bias=False), 7).b_q is None


# -- dropout -------------------------------------------------------------------------------------
def test_dropout_replay_matches_spec(backend):
    if backend.capabilities.dropout != "replay":
        pytest.skip(f"{backend.name}: dropout={backend.capabilities.dropout!r}, no keep mask to replay")
    config, params, x = make_case(2, 8, 16, 16, 4, True, True, dropout_p=0.4)
    kpm = padding_mask(2, 8)
    mask = spec.sample_dropout_mask((2, 4, 8, 8), 0.4, seed=3)
    golden = spec.forward(x, params, config, key_padding_mask=kpm, dropout_mask=mask)
    assert not np.allclose(golden, spec.forward(x, params, config, key_padding_mask=kpm))
    got = backend.to_numpy(run_forward(backend, config, params, x, kpm=kpm, dropout_mask=mask, training=True))
    np.testing.assert_allclose(got, golden, rtol=0, atol=1e-10)
    if callable(getattr(backend, "attn_weights", None)):
        scores = spec.intermediates(x, params, config, key_padding_mask=kpm)[7]
        w = backend.attn_weights(native(backend, scores), config, native(backend, kpm), native(backend, mask))
        want = S.attn_weights(scores, config, kpm, mask)
        np.testing.assert_allclose(backend.to_numpy(w), want, rtol=0, atol=1e-12)


def test_own_rng_dropout(backend):
    if backend.capabilities.dropout == "none":
        pytest.skip(f"{backend.name} declares no dropout")
    check_own_rng_dropout(backend)


def check_own_rng_dropout(backend):
    T, p = 24, 0.5
    config = spec.AttentionConfig(d_in=T, d_out=T, n_heads=1, causal=False, dropout_p=p)
    eye = np.eye(T)  # x = I, W_q = 0, W_v = W_o = I: the output rows are the dropped weights
    params = spec.Params(W_q=np.zeros((T, T)), W_k=eye, W_v=eye, W_o=eye, b_o=np.zeros(T))
    x = np.broadcast_to(eye, (4, T, T)).copy()
    got = backend.to_numpy(run_forward(backend, config, params, x, training=True))
    kept = (1 / T) / (1 - p)
    assert np.all(np.isclose(got, 0, atol=1e-12) | np.isclose(got, kept, rtol=1e-9)), "weights not 0 or w/(1-p)"
    dropped = np.isclose(got, 0, atol=1e-12).mean()
    assert 0.4 < dropped < 0.6, f"dropped fraction {dropped}, expected about {p}"
    again = backend.to_numpy(run_forward(backend, config, params, x, training=True))
    assert not np.array_equal(got, again), "own-RNG dropout repeated the same mask"
    evaluated = backend.to_numpy(run_forward(backend, config, params, x, training=False))
    np.testing.assert_allclose(evaluated, np.full_like(evaluated, 1 / T), rtol=1e-12)  # eval: identity


def test_rng_only_backends_refuse_a_keep_mask(backend):
    if backend.capabilities.dropout != "rng":
        pytest.skip(f"{backend.name}: dropout={backend.capabilities.dropout!r}")
    config, params, x = make_case(1, 4, 8, 8, 2, True, False, dropout_p=0.5)
    with pytest.raises(ValueError, match="cannot replay a dropout mask"):
        run_forward(backend, config, params, x, dropout_mask=np.ones((1, 2, 4, 4), dtype=bool), training=True)


# -- NumPy backend internals: blocks, groups, float16 --------------------------------------------
@pytest.mark.parametrize("block,budget", [(4, 1), (8, 10**9), (128, 2 << 20)])
@pytest.mark.parametrize("causal", [True, False])
def test_numpy_blocking_matches_spec(monkeypatch, block, budget, causal):
    """T not a multiple of the block, one head per group, everything in one group: same result."""
    import impls.numpy_backend as nb

    monkeypatch.setattr(nb, "_BLOCK", block)
    monkeypatch.setattr(nb, "_BUDGET", budget)
    be = nb.NumpyBackend()
    config, params, x = make_case(3, 19, 12, 16, 4, causal, True, dropout_p=0.25)
    kpm = padding_mask(3, 19, seed=1)
    mask = spec.sample_dropout_mask((3, 4, 19, 19), 0.25, seed=5)
    for dm in (None, mask):
        golden = spec.forward(x, params, config, key_padding_mask=kpm, dropout_mask=dm)
        got = run_forward(be, config, params, x, kpm=kpm, dropout_mask=dm)
        np.testing.assert_allclose(got, golden, rtol=0, atol=1e-10)


def test_numpy_float16_accumulates_in_float32():
    from impls.numpy_backend import NumpyBackend

    be = NumpyBackend()
    config, params, x = make_case(2, 64, 32, 32, 4, True, True)
    golden = spec.forward(x, params, config)
    got = run_forward(be, config, params, x, dtype="float16")
    assert got.dtype == np.float16
    # float32 accumulation: only the float16 rounding of inputs, weights and output remains
    assert np.abs(got.astype(np.float64) - golden).max() < 5e-3


# -- GPU backends on a machine without a GPU ------------------------------------------------------
@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_gpu_backend_without_a_gpu_is_a_skip_with_its_reason(name):
    """On a machine without the device, resolving a GPU backend gives a skip naming what is missing."""
    info = resolve(name)
    if info.skip_reason is None:
        pytest.skip(f"{name} is usable on this machine: the no-GPU reason cannot be observed")
    missing = "cupy" if name == "cupy" else "torch"
    assert missing in info.skip_reason and ("CUDA" in info.skip_reason or "not installed" in info.skip_reason
                                            or "is_available" in info.skip_reason), info.skip_reason


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=False)


def test_importing_impls_never_imports_a_framework():
    code = (
        "import sys\n"
        "import impls, impls.registry, impls.numpy_backend, impls.torch_backend, impls.torch_sdpa, "
        "impls.torch_mha, impls.cupy_backend\n"
        "from impls.registry import BUILTINS, _load_module_attr\n"
        "for spec in BUILTINS.values():\n"
        "    cls = _load_module_attr(spec)\n"
        "    assert cls.capabilities.dtypes, spec\n"
        "bad = [m for m in ('torch', 'cupy') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    r = run_python(code)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_backends_without_their_framework_report_why():
    # sys.modules[name] = None makes `import name` raise ImportError, as if it were not installed
    code = (
        "import sys\n"
        "sys.modules['torch'] = None; sys.modules['cupy'] = None\n"
        "from impls.registry import resolve\n"
        "for name in ('torch', 'torch-cuda', 'torch-sdpa', 'torch-sdpa-cuda', 'torch-mha', 'cupy'):\n"
        "    print(name, '|', resolve(name).skip_reason)\n"
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    reasons = dict(line.split(" | ", 1) for line in r.stdout.strip().splitlines())
    assert len(reasons) == 6
    for name, reason in reasons.items():
        expected = "cupy is not installed" if name == "cupy" else "torch is not installed"
        assert reason.startswith(expected), (name, reason)


@pytest.fixture
def numpy_as_cupy(monkeypatch):
    """A stand-in `cupy` module made of NumPy: CuPy mirrors NumPy's API, so the CuPy backend's
    logic (masks, fully masked rows, dropout, float16 via float32) runs here without a GPU."""
    import types

    fake = types.ModuleType("cupy")
    fake.__dict__.update({k: getattr(np, k) for k in dir(np) if not k.startswith("_")})
    fake.asnumpy = np.asarray
    fake.is_available = lambda: True
    fake.random = types.SimpleNamespace(random=lambda shape, dtype: np.random.default_rng().random(shape, dtype=dtype))
    fake.cuda = types.SimpleNamespace(Device=lambda: types.SimpleNamespace(synchronize=lambda: None))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    from impls.cupy_backend import CupyBackend

    return CupyBackend()


def test_cupy_backend_logic_on_a_numpy_stand_in(numpy_as_cupy):
    be = numpy_as_cupy
    assert be.availability() is None
    for cfg in CONFIGS:
        config, params, x = make_case(*cfg, dropout_p=0.3)
        B, T = x.shape[:2]
        kpm = padding_mask(B, T)
        mask = spec.sample_dropout_mask((B, config.n_heads, T, T), 0.3, seed=1)
        for m, dm in ((None, None), (kpm, None), (kpm, mask)):
            golden = spec.forward(x, params, config, key_padding_mask=m, dropout_mask=dm)
            got = be.to_numpy(run_forward(be, config, params, x, kpm=m, dropout_mask=dm))
            np.testing.assert_allclose(got, golden, rtol=0, atol=1e-10)
        inter = spec.intermediates(x, params, config, key_padding_mask=kpm, dropout_mask=mask)
        w = be.prepare(params, "float64")
        for n in exposed_steps(be):
            if n == 3:
                continue
            out, want = call_step(be, n, inter, config, w, kpm, dropout_mask=mask)
            for o, g in zip(*((out, want) if isinstance(want, tuple) else ((out,), (want,)))):
                np.testing.assert_allclose(be.to_numpy(o), g, rtol=0, atol=1e-10, err_msg=STEPS[n].name)
    assert run_forward(be, config, params, x, dtype="float16").dtype == np.float16
    check_own_rng_dropout(be)
    with pytest.raises(ValueError, match="does not compute in 'bfloat16'"):
        be.prepare(params, "bfloat16")
