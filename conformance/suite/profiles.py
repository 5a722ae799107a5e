"""Hypothesis settings profiles, selected at run time (`--profile`), never hard-coded in checks.

- quick: a smoke run while developing (a few examples per check).
- default: `nox -s conformance` and CI; sized so all CPU backends finish in under 3 minutes
  on a 2-core machine.
- thorough: many more examples, for release checks and new backends.
- reproducible: derandomised and without the example database, so a published report is the
  same on every run of the same code (the seed is fixed by the profile).
- mutants: default's examples without the shrink phase: `nox -s mutants` only needs to know
  whether and where a mutant dies, not its minimal example.

Hypothesis's own deadline is off in every profile: a GPU's first call (warm-up, compilation)
can take seconds. Hangs are caught by the suite's own per-example limit instead
(`conformance.suite.watchdog`), which aborts the check without shrinking.
"""

from __future__ import annotations

from hypothesis import Phase, settings

#: Hypothesis's explain phase is left out: it cost about half of each failing check's time
#: and its notes are not shown in records (the shrunk example and saved inputs are).
_PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)

#: `derandomize` is stated in every profile: Hypothesis loads its own "ci" profile (derandomised)
#: when it sees a CI environment variable, and a profile registered without the setting inherits
#: it. A CI run then ignored `--seed` (derandomize wins over a seed) and drew other examples than
#: the same command at a desk, so a failure it printed a seed for did not reproduce.
PROFILES: dict[str, dict] = {
    "quick": {"max_examples": 5, "derandomize": False, "phases": _PHASES},
    "default": {"max_examples": 30, "derandomize": False, "phases": _PHASES},
    "thorough": {"max_examples": 200, "derandomize": False, "phases": _PHASES},
    "reproducible": {"max_examples": 30, "derandomize": True, "database": None, "phases": _PHASES},
    "mutants": {"max_examples": 30, "derandomize": False, "phases": (Phase.explicit, Phase.reuse, Phase.generate)},
}

#: The size regime (`conformance.suite.sizes`), used by the checks that draw large sizes (T past
#: 512, head_dim past 64, many heads, wide d_in, B x H past 32): the share of their examples
#: drawn large, and the estimated reference seconds one large example may cost (also the
#: limit for the fixed class representatives `matches_spec` runs first). At 0.3 s T reaches
#: about 1650 in float16, 1750 in float64, 2080 in bfloat16 and 2830 in float32; at 2 s
#: (thorough) 4096 everywhere but float64 (3661: its long-double golden's memory). quick
#: stays at 0.1 s (T up to about 950 to 1650): a smoke run, often with a short --example-timeout.
LARGE_SHARE = {"quick": 0.2, "default": 0.2, "thorough": 0.1, "reproducible": 0.2, "mutants": 0.2}
LARGE_BUDGET_S = {"quick": 0.1, "default": 0.3, "thorough": 2.0, "reproducible": 0.3, "mutants": 0.3}

#: Per-example time limits in seconds: the first example of a check may warm a device up.
EXAMPLE_TIMEOUT_S = {"first": 120.0, "later": 30.0}


def large_regime() -> tuple[float, float]:
    """(LARGE_SHARE, LARGE_BUDGET_S) of the current profile, or of the profile it derives from
    ("mutants-no-database"); Hypothesis's own default profile gets ours."""
    from hypothesis import settings

    name = settings.get_current_profile_name()
    base = next((p for p in PROFILES if name == p or name.startswith(f"{p}-")), "default")
    return LARGE_SHARE[base], LARGE_BUDGET_S[base]


def register() -> None:
    for name, kw in PROFILES.items():
        settings.register_profile(name, deadline=None, report_multiple_bugs=False, print_blob=True, **kw)


def load(name: str) -> None:
    """Register all profiles and make `name` current; ValueError names the valid ones."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    register()
    settings.load_profile(name)
