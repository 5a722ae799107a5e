"""Plumbing shared by the project's own tests."""

from __future__ import annotations

import pytest
from hypothesis import settings


@pytest.fixture(autouse=True)
def _hypothesis_profile_restored():
    """Some tests load a suite profile (the mutants' has no shrink phase); a later test in the
    same xdist worker must not inherit it, so the profile in force before each test is put back."""
    name = settings.get_current_profile_name()
    yield
    if settings.get_current_profile_name() != name:
        settings.load_profile(name)
