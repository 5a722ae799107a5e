"""The suite's Hypothesis profiles behave the same in a CI job as at a desk."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conformance.suite.profiles import PROFILES

# Draws of one @given run under each profile with the global seed forced the way the CLI's
# --seed forces it (pytest's --hypothesis-seed sets hypothesis.core.global_force_seed).
_PROBE = """
import json, sys
from hypothesis import core, given, settings, strategies as st
from conformance.suite import profiles
out = {}
for name in profiles.PROFILES:
    profiles.load(name)
    out[name] = {"derandomize": settings().derandomize, "draws": {}}
    for s in (1, 2):
        seen = []
        core.global_force_seed = s
        @settings(max_examples=3, database=None)
        @given(st.integers(0, 2**60))
        def probe(v):
            seen.append(v)
        probe()
        out[name]["draws"][s] = seen
print(json.dumps(out))
"""


def test_a_ci_environment_does_not_derandomise_the_profiles_or_ignore_the_seed():
    """Hypothesis loads its derandomised "ci" profile when it sees CI=true; a profile inheriting
    that ignored the run's seed, so a failure printed with --seed N did not reproduce locally."""
    env = {**os.environ, "CI": "true", "PYTHONPATH": os.getcwd()}
    got = json.loads(subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                                    text=True, check=True).stdout)
    for name, kw in PROFILES.items():
        assert got[name]["derandomize"] is kw["derandomize"], name
    for name in ("quick", "default", "thorough", "mutants"):
        draws = got[name]["draws"]
        assert draws["1"] != draws["2"], f"{name}: seeds 1 and 2 drew the same examples under CI=true"
