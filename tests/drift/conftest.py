"""Fixtures of the drift specs: one synthetic world and a four-week reference drawn from it."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.drift.synthetic import make_window, make_world


@pytest.fixture(scope="module")
def world() -> dict[str, pd.DataFrame]:
    return make_world()


@pytest.fixture(scope="module")
def reference(world) -> pd.DataFrame:
    """Four weeks, as DriftSettings.reference_days asks."""
    return make_window(world, 12000, seed=1, days=28.0)
