"""README.md and docs/*.md stay true: every count they state matches the code, the README stays
short and runs CI's command, and every relative link resolves.

Counts are written with digits in fixed phrases ("52 checks (44 forward, 8 gradient)", "10
built-in backends", "54 mutants", "6 outcomes", ...), so a regex finds each one. A number in a
measurement log ("the control passing all 43 checks, the suite's count then") is history and is
phrased otherwise.
"""

from __future__ import annotations

import importlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 250  # issue #30: a README a newcomer reads in five minutes

# Pages a link may name before they exist: none now (kept for work split across branches).
PENDING: set[str] = set()


def flat(text: str) -> str:
    """The text with every run of whitespace as one space: a phrase may wrap across lines."""
    return re.sub(r"\s+", " ", text)


# --- what the code says --------------------------------------------------------------------

def _checks() -> list:
    from conformance.suite.checks import catalogue

    return catalogue()


def _group(name: str) -> int:
    return sum(c.group == name for c in _checks())


def _mutants_in(module: str) -> int:
    from conformance.mutants.catalogue import MUTANTS

    return sum(m.__module__ == f"conformance.mutants.{module}" for m in MUTANTS)


def _outcomes() -> list[str]:
    schema = json.loads((ROOT / "conformance" / "results.schema.json").read_text())
    return _find_key(schema, "outcome")["enum"]


def _find_key(node: object, key: str) -> dict:
    """The first mapping under `key` anywhere in a JSON document (the record's outcome)."""
    if isinstance(node, dict):
        if isinstance(node.get(key), dict) and "enum" in node[key]:
            return node[key]
        for v in node.values():
            found = _find_key(v, key)
            if found:
                return found
    if isinstance(node, list):
        for v in node:
            found = _find_key(v, key)
            if found:
                return found
    return {}


def _nox_sessions() -> list[str]:
    src = (ROOT / "noxfile.py").read_text()
    return re.findall(r"@nox\.session[^\n]*\n(?:@[^\n]*\n)*def (\w+)\(", src)


def _builtins() -> list[str]:
    from impls.registry import BUILTINS

    return list(BUILTINS)


def _len(module: str, attr: str) -> int:
    """The length of a registry the code keeps (`module.attr`)."""
    return len(getattr(importlib.import_module(module), attr))


WORDS = {"twelve": 12}  # number words a count may still be written in


def number(s: str) -> int:
    return WORDS[s.lower()] if s.lower() in WORDS else int(s)


# name -> (phrase, what the code counts for each of its groups, in order)
COUNTS: dict[str, tuple[str, Callable[..., tuple[int, ...]]]] = {
    "checks": (r"\b(\d+) checks \((\d+) forward, (\d+) gradient\)",
               lambda: (len(_checks()), _group("forward"), _group("gradients"))),
    "gradient checks": (r"\b(\d+) gradient checks\b", lambda: (_group("gradients"),)),
    "built-in backends": (r"\b(\d+) built-in backends\b", lambda: (len(_builtins()),)),
    "mutants": (r"\b(\d+) mutants\b(?! in `conformance/mutants/)",
                lambda: (_len("conformance.mutants.catalogue", "MUTANTS"),)),
    "mutants of one module": (r"\b(\d+) mutants in `conformance/mutants/(\w+)\.py`",
                              lambda module: (_mutants_in(module),)),
    "outcomes": (r"\b(\d+) outcomes\b", lambda: (len(_outcomes()),)),
    "verdicts": (r"\b(\d+) verdicts\b", lambda: (_len("conformance.verdict", "WORDS"),)),
    "profiles": (r"\b(\d+) profiles\b", lambda: (_len("conformance.suite.profiles", "PROFILES"),)),
    "steps": (r"\b(\d+|twelve) steps\b", lambda: (_len("spec.table", "STEPS"),)),
    "dtypes": (r"\b(\d+) dtypes\b", lambda: (_len("spec.config", "FLOAT_DTYPES"),)),
    "nox sessions": (r"\b(\d+) nox sessions\b", lambda: (len(_nox_sessions()),)),
    "commands": (r"\b(\d+) commands\b", lambda: (_len("conformance.commands", "COMMANDS"),)),
    "conventions": (r"\b(\d+) conventions\b", lambda: (_len("spec.conventions", "MENU"),)),
}


def wrong_counts(name: str, text: str) -> tuple[int, list[str]]:
    """How many times `text` states the count `name`, and each statement that disagrees with the code."""
    phrase, expected = COUNTS[name]
    found, wrong = 0, []
    for m in re.finditer(phrase, flat(text), flags=re.IGNORECASE):
        found += 1
        numeric = [g.isdigit() or g.lower() in WORDS for g in m.groups()]
        stated = tuple(number(g) for g, n in zip(m.groups(), numeric) if n)
        args = [g for g, n in zip(m.groups(), numeric) if not n]  # e.g. the mutants' module
        want = expected(*args)
        if stated != want:
            wrong.append(f"{m.group(0)!r}: the code says {', '.join(map(str, want))}")
    return found, wrong


@pytest.mark.parametrize("name", COUNTS)
def test_every_stated_count_matches_the_code(name):
    found, wrong = 0, []
    for page in PAGES:
        n, bad = wrong_counts(name, page.read_text(encoding="utf-8"))
        found += n
        wrong += [f"{page.relative_to(ROOT)}: {w}" for w in bad]
    assert found, f"no page states the count of {name} (phrase {COUNTS[name][0]!r})"
    assert not wrong, "\n".join(wrong)


def test_a_wrong_count_is_reported():
    """The checker itself can fail: a stated count one off is caught, with the code's number."""
    right = len(_checks()), _group("forward"), _group("gradients")
    ok = f"The suite has {right[0]} checks ({right[1]} forward, {right[2]} gradient)."
    bad = f"The suite has {right[0] + 1} checks ({right[1]} forward, {right[2]} gradient)."
    assert wrong_counts("checks", ok) == (1, [])
    found, wrong = wrong_counts("checks", bad)
    assert found == 1 and len(wrong) == 1 and f"the code says {right[0]}" in wrong[0]
    assert wrong_counts("mutants of one module", "the 1 mutants in `conformance/mutants/sized.py`")[1]
    assert wrong_counts("steps", "the eleven steps")[0] == 0 and wrong_counts("steps", "the twelve steps") == (1, [])


NUMBER_WORDS = ("one two three four five six seven eight nine ten eleven thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty").split()  # "twelve steps" is read as 12
IN_WORDS = re.compile(rf"\b({'|'.join(NUMBER_WORDS)}) (checks \(|built-in backends|mutants\b(?! in `)|outcomes|"
                      r"verdicts|profiles|dtypes|nox sessions|conventions)", re.IGNORECASE)


def test_counts_are_written_in_digits():
    """A count in words ("four outcomes") would escape the checks above: none is left."""
    found = [f"{page.relative_to(ROOT)}: {m.group(0)!r}" for page in PAGES
             for m in IN_WORDS.finditer(flat(page.read_text(encoding="utf-8")))]
    assert not found, "write these counts in digits, so the test can check them:\n" + "\n".join(found)
    assert IN_WORDS.search("in one of four outcomes")  # the guard itself can fail


# --- tables that list what the code has -----------------------------------------------------

def table_first_column(text: str, header: str) -> list[str]:
    """The first cells of the Markdown table whose header row starts with `| header |`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line.split("|")[1].strip())
    return rows


def test_readme_tables_list_what_the_code_has():
    text = README.read_text(encoding="utf-8")
    outcomes = [c.strip("`") for c in table_first_column(text, "outcome")]
    assert outcomes == _outcomes()
    sessions = [c.strip("`").removeprefix("nox -s ") for c in table_first_column(text, "session")]
    assert sorted(sessions) == sorted(_nox_sessions())
    from conformance import cli

    exits = sorted(v for k, v in vars(cli).items() if k.startswith("EXIT_") and isinstance(v, int))
    assert [int(c) for c in table_first_column(text, "status")] == exits
    backend_row = next(line for line in text.splitlines() if line.startswith("| `--backend SPEC`"))
    assert re.findall(r"`([a-z][\w-]*)`", backend_row.split("|")[2]) == _builtins()


# --- the README's size and CI's command ------------------------------------------------------

def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n < MAX_README_LINES, f"README.md has {n} lines; move detail to a page under docs/"


def test_ci_runs_the_readmes_test_command():
    """.ci/run runs the README's test command byte for byte (its last line)."""
    command = (ROOT / ".ci" / "run").read_text().rstrip("\n").splitlines()[-1]
    assert command == "python3 -m pip install nox && nox -s tests"
    assert f"    {command}\n" in README.read_text(encoding="utf-8")


# --- links -------------------------------------------------------------------------------------

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where brackets are not links."""
    return CODE.sub("", FENCE.sub("", text))


def anchors(text: str) -> set[str]:
    """GitHub's ids for a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    seen: Counter[str] = Counter()
    ids = set()
    for line in FENCE.sub("", text).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        ids.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return ids


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """Each relative link of `page` (its text, or `text` as if it lay there) that names no file or heading."""
    text = page.read_text(encoding="utf-8") if text is None else text
    bad = []
    for target in LINK.findall(prose(text)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        if not path:  # an anchor on the page itself
            if anchor not in anchors(text):
                bad.append(f"{target}: this page has no heading with id #{anchor}")
            continue
        dest = (page.parent / path).resolve()
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists():
            if rel not in PENDING:
                bad.append(f"{target}: no file {rel}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{target}: {rel} has no heading with id #{anchor}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    assert not broken_links(page), "\n".join(broken_links(page))


def test_a_broken_link_is_reported():
    """The link checker itself can fail: a missing file and missing anchors are caught, code is not a link."""
    text = ("# Title\n\n[ok](#title) [gone](nowhere.md) [no anchor](../README.md#no-such-heading) "
            "[here](#nope) [fine](../README.md#options) `[code](x.md)`\n")
    got = broken_links(ROOT / "docs" / "probe.md", text)
    assert len(got) == 3, got
    assert "nowhere.md" in got[0] and "#no-such-heading" in got[1] and "#nope" in got[2]
