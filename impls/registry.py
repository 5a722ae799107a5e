"""Selecting backends: built-in names, `module.path:attr`, and installed entry points.

Unknown names are errors that list what is available; an import error shows its cause; an
object missing part of the contract is refused with the parts named. A backend whose library
or device is absent resolves fine and reports `availability()`: the suite skips it with that
reason. All errors are `BackendSpecError`, one line each, for the CLI to print without a
traceback.

Availability has one policy, here (`availability`), evaluated once per process by `resolve`:
a reason string is a skip (`BackendInfo.skip_reason`); an `availability()` that raises or
returns anything but None or a non-empty string is the backend's failure (`BackendInfo.error`),
never a skip. The run, its workers, the bench and the semantic profile all read those fields.
"""

from __future__ import annotations

import importlib
import os
import re
import site
import sys
from importlib import metadata
from pathlib import Path

from impls.base import BackendInfo, missing_parts

_TEXT_LIMIT = 2000  # characters of a backend's reason or error kept: a 2 MB reason stays readable

ENTRY_POINT_GROUP = "mha_conformance.backends"
# always importable: the checkout (runs start there), or installed the site-packages holding mha_conformance
_CHECKOUT = str(Path(__file__).resolve().parents[__name__.count(".")])

#: Built-in backends: name -> "module:attr" inside this checkout.
BUILTINS: dict[str, str] = {
    "numpy": "impls.numpy_backend:NumpyBackend",
    "torch": "impls.torch_backend:TorchBackend",
    "torch-cuda": "impls.torch_backend:TorchCudaBackend",
    "torch-sdpa": "impls.torch_sdpa:TorchSdpaBackend",
    "torch-sdpa-cuda": "impls.torch_sdpa:TorchSdpaCudaBackend",
    "torch-mha": "impls.torch_mha:TorchMhaBackend",
    "cupy": "impls.cupy_backend:CupyBackend",
    "jax": "impls.jax_backend:JaxBackend",
    "flax": "impls.flax_backend:FlaxBackend",
    "onnxruntime": "impls.onnxruntime_backend:OnnxRuntimeBackend",
    "torch-flex": "impls.torch_flex:TorchFlexBackend",
}

#: Built-ins that run only when named: flex_attention eager on the CPU is tens of times slower than
#: SDPA per call (impls/torch_flex.py says how much), too slow for the default run's budget.
OPT_IN = ("torch-flex",)
#: What `--backend all` (the default) runs: every built-in but the opt-in ones; those that cannot run here skip.
DEFAULT_BACKENDS = tuple(n for n in BUILTINS if n not in OPT_IN)

_MODULE_ATTR = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class BackendSpecError(ValueError):
    """A backend specification that cannot be resolved; the message is one line for users."""


def entry_points() -> dict[str, metadata.EntryPoint]:
    """Installed backends advertised under the `mha_conformance.backends` entry-point group."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_names() -> list[str]:
    return sorted(set(BUILTINS) | set(entry_points()))


def _instantiate(obj: object, spec: str) -> object:
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as e:  # the constructor is third-party code
            raise BackendSpecError(f"backend {spec!r}: constructing {obj.__name__}() failed: "
                                   f"{type(e).__name__}: {e}") from None
    missing = missing_parts(obj)
    if missing:
        raise BackendSpecError(f"backend {spec!r} does not satisfy the backend contract; "
                               f"missing: {', '.join(missing)} (see docs/plugging-in-a-backend.md)")
    return obj


def _load_module_attr(spec: str) -> object:
    if not _MODULE_ATTR.match(spec):
        raise BackendSpecError(f"malformed backend {spec!r}: expected a built-in name "
                               f"({', '.join(available_names())}) or 'module.path:attr'")
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or anything the module raises while importing
        raise BackendSpecError(f"backend {spec!r}: cannot import module {module_name!r}: "
                               f"{type(e).__name__}: {e}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BackendSpecError(f"backend {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _said(value: object, limit: int = _TEXT_LIMIT) -> str:
    """str(value), encodable as UTF-8 and bounded; a __str__ that raises is said, not raised."""
    try:
        text = str(value)
    except Exception as e:  # noqa: BLE001 - third-party __str__
        text = f"<{type(value).__name__} whose str() raised {type(e).__name__}>"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else f"{text[:limit]} [... {len(text) - limit} more characters cut]"


def availability(backend: object) -> tuple[str | None, str | None]:
    """(skip reason, error) of a backend under the one policy: a non-empty reason string means
    this machine lacks something (a skip); an availability() that raises or returns anything
    else but None is the backend's error, never a skip. No availability(): available."""
    try:
        fn = getattr(backend, "availability", None)
        if fn is None:
            return None, None
        reason = fn()
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # third-party code: even SystemExit is its error, not ours
        lines = _said(e).strip().splitlines()
        return None, f"availability() raised {type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    if reason is None or (isinstance(reason, str) and reason):
        return (None if reason is None else _said(reason)), None
    try:
        shown = repr(reason)
    except Exception as e:  # noqa: BLE001 - third-party __repr__
        shown = f"<{type(reason).__name__} whose repr() raised {type(e).__name__}>"
    return None, f"availability() returned {_said(shown, 200)}; expected None (available) or a reason string"


def resolve(spec: str) -> BackendInfo:
    """Resolve one backend specification to a backend object, its skip reason or its error (see
    `availability`); availability() is called here, once."""
    spec = spec.strip()
    if spec in BUILTINS:
        obj, source = _load_module_attr(BUILTINS[spec]), "builtin"
    elif ":" in spec:
        obj, source = _load_module_attr(spec), "module:attr"
    else:
        eps = entry_points()
        if spec not in eps:
            raise BackendSpecError(f"unknown backend {spec!r}; available: {', '.join(available_names())}, "
                                   f"or 'module.path:attr'")
        try:
            obj = eps[spec].load()
        except Exception as e:
            raise BackendSpecError(f"backend {spec!r}: loading entry point {eps[spec].value!r} failed: "
                                   f"{type(e).__name__}: {e}") from None
        source = "entry point"
    backend = _instantiate(obj, spec)
    reason, error = availability(backend)
    return BackendInfo(backend=backend, spec=spec, source=source, skip_reason=reason, error=error)


def resolve_all(specs: list[str] | tuple[str, ...]) -> list[BackendInfo]:
    """Resolve several specifications; duplicate backend names are an error."""
    infos, seen = [], {}
    for spec in specs:
        info = resolve(spec)
        name = info.backend.name
        if name in seen:
            raise BackendSpecError(f"backends {seen[name]!r} and {spec!r} share the name {name!r}; names must be unique")
        seen[name] = spec
        infos.append(info)
    return infos


def import_path(spec: str) -> list[str]:
    """The sys.path entries a fresh process needs to import `spec`'s module as this one did.

    For a `module.path:attr` backend: the directory its top-level package was imported from,
    unless that is on every process's path anyway (site-packages, this checkout), then the
    entries of $PYTHONPATH (what the plug-in itself may import). Empty for built-ins and entry
    points (installed), and when nothing extra is needed. A failure bundle stores it, so
    `python -m conformance.repro` replays a plug-in from a directory that was on PYTHONPATH.
    """
    if spec in BUILTINS or not _MODULE_ATTR.match(spec):
        return []
    top = sys.modules.get(spec.split(":")[0].split(".")[0])
    where = getattr(top, "__file__", None)
    if where is None:  # a namespace package: its first directory
        paths = list(getattr(top, "__path__", []) or [])
        root = str(Path(paths[0]).parent) if paths else None
    else:
        f = Path(where).resolve()
        root = str(f.parent.parent if f.name == "__init__.py" else f.parent)
    standard = {str(Path(d).resolve()) for d in [*site.getsitepackages(), site.getusersitepackages(), _CHECKOUT]}
    out = [root] if root and root not in standard else []
    for d in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if d and str(Path(d).resolve()) not in out and str(Path(d).resolve()) not in standard:
            out.append(str(Path(d).resolve()))
    return out
