"""Build of the installable package: the checkout's four packages under one import name.

`pip install .` copies spec/, impls/, conformance/ and reports/ to mha_conformance/spec, ...
and rewrites, file by file, every absolute import of them (`from spec.x import y` ->
`from mha_conformance.spec.x import y`) and every string literal that is exactly a module path
of them ("impls.numpy_backend:NumpyBackend", "conformance.findings" in a `-m` argv) to the
prefixed name. Nothing else lands in site-packages, so a user's own `spec` or `tests` cannot
collide. The checkout itself is never changed: `nox -s tests` and `nox -s conformance` import
the unprefixed packages from the repository root. What runs differently installed (the command
name in usage and repro lines, where a fresh worker process starts) is decided at run time
from the package's own `__name__` (conformance/__init__.py). Editable installs are not
supported: run from the checkout instead.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = "mha_conformance"
TOP = ("spec", "impls", "conformance", "reports")
# a string literal that is exactly a module path of ours, optionally with ":attr"
MODULE_STRING = re.compile(rf"^(['\"])({'|'.join(TOP)})((?:\.\w+)+(?::\w+)?)\1$")
# a line of a multi-line string that imports ours: code run with `python -c` (conformance/speed/fresh.py)
CODE_IMPORT = re.compile(rf"^(\s*from )({'|'.join(TOP)})(?=[.\s])", re.MULTILINE)
INIT = '''"""mha-conformance, installed: the spec (`mha_conformance.spec`), the backends and their
contract (`mha_conformance.impls`), the suite (`mha_conformance.conformance`) and the report
renderer (`mha_conformance.reports`). Run it as `mha-conformance`; see docs/install-and-adopt.md."""

from importlib import metadata as _metadata

__version__ = _metadata.version("mha-conformance")
'''


def rewrite(source: str, where: str = "<source>") -> str:
    """`source` with our absolute imports and module-path strings prefixed by ROOT.

    Token-based, so comments and names that merely look like ours (a variable called `spec`)
    are left alone. An `import spec`-style statement would bind a different name once
    prefixed, so it is refused rather than silently broken."""
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def at(pos: tuple[int, int]) -> int:  # tokenize's (row, col) -> offset in source
        return starts[pos[0] - 1] + pos[1]

    toks = list(tokenize.generate_tokens(io.StringIO(source).readline))
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement)
    for i, t in enumerate(toks):
        prev = toks[i - 1] if i else None
        if t.type == tokenize.NAME and t.string in TOP and prev is not None and prev.string in ("from", "import"):
            before = toks[i - 2] if i >= 2 else None
            at_statement = before is None or before.type in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT,
                                                             tokenize.DEDENT) or before.string == ";"
            if not at_statement:
                continue  # `from x import spec` names our module only through x: left alone
            if prev.string == "import":
                raise ValueError(f"{where}:{t.start[0]}: 'import {t.string}...' cannot be prefixed; "
                                 f"write 'from {t.string}... import name'")
            edits.append((at(t.start), at(t.end), f"{ROOT}.{t.string}"))
        elif t.type == tokenize.STRING:
            m = MODULE_STRING.match(t.string)
            text = f"{m[1]}{ROOT}.{m[2]}{m[3]}{m[1]}" if m else CODE_IMPORT.sub(rf"\g<1>{ROOT}.\g<2>", t.string)
            if text != t.string:
                edits.append((at(t.start), at(t.end), text))
    for start, end, text in sorted(edits, reverse=True):  # back to front: offsets stay valid
        source = source[:start] + text + source[end:]
    return source


class BuildPrefixed(build_py):
    """build_py that rewrites each copied module and writes the top-level mha_conformance/__init__.py."""

    def build_module(self, module, module_file, package):  # type: ignore[override]
        out, copied = super().build_module(module, module_file, package)
        if out.endswith(".py"):
            path = Path(out)
            path.write_text(rewrite(path.read_text(encoding="utf-8"), module_file), encoding="utf-8")
        return out, copied

    def run(self) -> None:
        super().run()
        init = Path(self.build_lib) / ROOT / "__init__.py"
        init.parent.mkdir(parents=True, exist_ok=True)
        init.write_text(INIT, encoding="utf-8")


# every package of the four trees, installed as mha_conformance.<package>; tests/ stays out
PACKAGES = find_packages(include=[*TOP, *(f"{t}.*" for t in TOP)])
setup(
    packages=[f"{ROOT}.{p}" for p in PACKAGES],  # mha_conformance itself: its __init__.py is written by run()
    package_dir={f"{ROOT}.{p}": p.replace(".", "/") for p in PACKAGES},
    package_data={f"{ROOT}.conformance": ["results.schema.json"], f"{ROOT}.conformance.plugin": ["pytest.ini"],
                  f"{ROOT}.impls": ["expected/*.toml"]},  # the built-in backends' known defects
    cmdclass={"build_py": BuildPrefixed},
)
