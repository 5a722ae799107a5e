"""Selecting backends: built-in names, `module:attr`, entry points, and the errors users see."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from impls import registry
from impls.base import BackendInfo
from impls.registry import (
    BUILTINS,
    ENTRY_POINT_GROUP,
    BackendSpecError,
    resolve,
    resolve_all,
)

GOOD = textwrap.dedent('''
    import numpy as np
    from impls.base import Backend as _Base, Capabilities

    class Good(_Base):
        name = "{name}"
        capabilities = Capabilities()
        def from_numpy(self, a, dtype=None):
            return np.array(a, dtype=dtype or a.dtype)
        def to_numpy(self, a):
            return np.asarray(a)
        def forward(self, x, weights, config, **kw):
            return np.zeros(x.shape[:2] + (config.d_out,), x.dtype)

    class Away(Good):
        name = "away"
        def availability(self):
            return "needs a quantum accelerator, found none"

    class Raises(Good):
        name = "raises"
        def availability(self):
            raise RuntimeError("driver exploded")

    class Odd(Good):
        name = "odd"
        def availability(self):
            return 42

    class Partial:
        name = "partial"
        capabilities = Capabilities()
        def from_numpy(self, a, dtype=None):
            return a

    class WrongCaps(Good):
        capabilities = {{"dtypes": ["float64"]}}

    class BadInit(Good):
        def __init__(self):
            raise OSError("no config file")

    instance = Good()
''')


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A fresh importable package `fakepkg` (module `fakepkg.attn`) on sys.path."""
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "attn.py").write_text(GOOD.format(name="fake"))
    (pkg / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    for mod in [m for m in sys.modules if m == "fakepkg" or m.startswith("fakepkg.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def add_dist_info(root: Path, entries: dict[str, str], dist: str = "fakepkg", version: str = "0.1") -> None:
    """Install-like metadata so importlib.metadata sees `entries` in our entry-point group."""
    info = root / f"{dist}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")


# -- built-ins -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtins_resolve(name):
    info = resolve(name)
    assert isinstance(info, BackendInfo)
    assert info.backend.name == name and info.source == "builtin" and info.spec == name
    assert info.skip_reason is None or (isinstance(info.skip_reason, str) and info.skip_reason)


def test_flex_is_a_builtin_that_runs_only_when_named():
    from impls.registry import DEFAULT_BACKENDS, OPT_IN

    assert "torch-flex" in BUILTINS and "torch-flex" in OPT_IN and "torch-flex" not in DEFAULT_BACKENDS
    assert set(DEFAULT_BACKENDS) | set(OPT_IN) == set(BUILTINS)


def test_numpy_runs_everywhere_and_cupy_skips_here():
    assert resolve("numpy").skip_reason is None
    cupy = resolve("cupy")
    try:
        import cupy as _  # noqa: F401
        pytest.skip("cupy is installed here: its no-cupy reason cannot be observed")
    except ImportError:
        pass
    assert "cupy is not installed" in cupy.skip_reason


def test_builtin_by_module_attr_is_the_same_class():
    a, b = resolve("numpy"), resolve("impls.numpy_backend:NumpyBackend")
    assert type(a.backend) is type(b.backend) and b.source == "module:attr"


# -- user errors -----------------------------------------------------------------------------------
def test_unknown_name_lists_available_names():
    with pytest.raises(BackendSpecError) as e:
        resolve("nope")
    msg = str(e.value)
    assert "unknown backend 'nope'" in msg
    for name in BUILTINS:
        assert name in msg
    assert "module.path:attr" in msg and "\n" not in msg


@pytest.mark.parametrize("spec", ["a:b:c", "mod:", ":Attr", "1mod:X", "mod:Attr-x"])
def test_malformed_module_attr(spec):
    with pytest.raises(BackendSpecError, match=r"malformed backend .*expected a built-in name .*'module.path:attr'"):
        resolve(spec)


def test_no_colon_bad_name_is_unknown():
    with pytest.raises(BackendSpecError, match=r"unknown backend 'no colon bad-name'; available: .*numpy"):
        resolve("no colon bad-name")


def test_import_error_shows_cause():
    with pytest.raises(BackendSpecError, match=r"cannot import module 'no_such_mod_xyz': ModuleNotFoundError"):
        resolve("no_such_mod_xyz:Backend")


def test_exception_at_import_shows_cause(plugin_dir):
    with pytest.raises(BackendSpecError, match=r"cannot import module 'fakepkg.broken': RuntimeError: boom at import"):
        resolve("fakepkg.broken:Backend")


def test_missing_attribute_is_named(plugin_dir):
    with pytest.raises(BackendSpecError, match=r"module 'fakepkg.attn' has no attribute 'Nothing'"):
        resolve("fakepkg.attn:Nothing")


def test_object_missing_parts_is_refused_naming_them(plugin_dir):
    with pytest.raises(BackendSpecError) as e:
        resolve("fakepkg.attn:Partial")
    msg = str(e.value)
    assert "does not satisfy the backend contract" in msg
    assert "to_numpy" in msg and "forward" in msg
    assert "from_numpy" not in msg.split("missing:")[1]  # what it has is not listed
    assert "docs/plugging-in-a-backend.md" in msg


def test_wrong_capabilities_type_is_refused(plugin_dir):
    with pytest.raises(BackendSpecError, match=r"capabilities \(an impls.Capabilities, got dict\)"):
        resolve("fakepkg.attn:WrongCaps")


def test_failing_constructor_shows_cause(plugin_dir):
    with pytest.raises(BackendSpecError, match=r"constructing BadInit\(\) failed: OSError: no config file"):
        resolve("fakepkg.attn:BadInit")


# -- module:attr plugins ---------------------------------------------------------------------------
def test_module_attr_class_and_instance(plugin_dir):
    info = resolve("fakepkg.attn:Good")
    assert info.backend.name == "fake" and info.source == "module:attr" and info.skip_reason is None
    assert resolve("fakepkg.attn:instance").backend.name == "fake"  # an instance works too


def test_unavailable_backend_resolves_with_its_reason(plugin_dir):
    assert resolve("fakepkg.attn:Away").skip_reason == "needs a quantum accelerator, found none"


def test_availability_that_raises_is_an_error_not_a_skip(plugin_dir):
    info = resolve("fakepkg.attn:Raises")
    assert info.skip_reason is None
    assert info.error == "availability() raised RuntimeError: driver exploded"


def test_availability_returning_a_non_string_is_an_error(plugin_dir):
    info = resolve("fakepkg.attn:Odd")
    assert info.skip_reason is None
    assert info.error == "availability() returned 42; expected None (available) or a reason string"


def test_availability_is_called_once_per_resolve(plugin_dir):
    import fakepkg.attn as mod

    calls = []

    class Counted(mod.Good):
        def availability(self):
            calls.append(1)
            return "not here"

    mod.Counted = Counted
    info = resolve("fakepkg.attn:Counted")
    assert (info.skip_reason, info.error, len(calls)) == ("not here", None, 1)


def test_the_run_takes_the_registrys_policy(plugin_dir):
    """The controller's states are the registry's fields, not a policy of its own."""
    from conformance.cli import _resolve

    infos, states = _resolve(["fakepkg.attn:Raises", "fakepkg.attn:Away", "numpy"])
    assert states == {i.spec: (i.skip_reason, i.error) for i in infos}
    assert states["fakepkg.attn:Raises"] == (None, "availability() raised RuntimeError: driver exploded")
    assert states["fakepkg.attn:Away"] == ("needs a quantum accelerator, found none", None)


def test_duplicate_names_are_an_error(plugin_dir):
    with pytest.raises(BackendSpecError, match=r"share the name 'numpy'"):
        resolve_all(["numpy", "impls.numpy_backend:NumpyBackend"])
    assert [i.backend.name for i in resolve_all(["numpy", "fakepkg.attn:Good"])] == ["numpy", "fake"]


# -- entry points ----------------------------------------------------------------------------------
def test_entry_point_resolution(plugin_dir):
    add_dist_info(plugin_dir, {"fakebackend": "fakepkg.attn:Good", "brokenbackend": "fakepkg.attn:Missing"})
    assert "fakebackend" in registry.entry_points()
    assert "fakebackend" in registry.available_names()
    info = resolve("fakebackend")
    assert info.backend.name == "fake" and info.source == "entry point" and info.skip_reason is None
    with pytest.raises(BackendSpecError, match=r"unknown backend 'nope'; available: .*fakebackend"):
        resolve("nope")
    with pytest.raises(BackendSpecError, match=r"backend 'brokenbackend': loading entry point 'fakepkg.attn:Missing' "
                                               r"failed: AttributeError"):
        resolve("brokenbackend")


def test_builtin_name_wins_over_an_entry_point(plugin_dir):
    add_dist_info(plugin_dir, {"numpy": "fakepkg.attn:Good"})
    assert resolve("numpy").source == "builtin"
