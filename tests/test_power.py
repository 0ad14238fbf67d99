"""What the gate can resolve: the minimum detectable difference, and pooling windows when one is too small."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from recsys_retrain.power import PairedScores, evidence, minimum_detectable_difference, pool, power_of

RNG = np.random.default_rng(0)


def test_for_many_users_the_mde_is_the_textbook_2_8_standard_errors():
    """alpha 0.05 two-sided, power 0.8: z 1.95996 + z 0.84162 = 2.80158 standard errors."""
    assert minimum_detectable_difference(1_000_000, 1.0) * 1000 == pytest.approx(2.80158, abs=1e-4)


def test_known_values_with_student_t_quantiles():
    # (t_0.975,99 1.98422 + t_0.8,99 0.84519) * 0.1 / 10
    assert minimum_detectable_difference(100, 0.1) == pytest.approx(0.028294, abs=1e-6)
    # a 40-user week with per-user differences scattered by 0.1 cannot resolve less than about 0.046
    assert minimum_detectable_difference(40, 0.1) == pytest.approx(0.04544, abs=1e-4)
    # alpha 0.10, power 0.9 on 30 users: (t_0.95,29 1.69913 + t_0.9,29 1.31143) * 0.2 / sqrt(30)
    assert minimum_detectable_difference(30, 0.2, alpha=0.10, power=0.9) == pytest.approx(0.10993, abs=1e-4)


def test_the_mde_grows_with_the_scatter_and_shrinks_with_the_square_root_of_the_users():
    base = minimum_detectable_difference(400, 0.1)
    assert minimum_detectable_difference(400, 0.2) == pytest.approx(2 * base)
    assert minimum_detectable_difference(1600, 0.1) == pytest.approx(base / 2, rel=2e-3)
    assert minimum_detectable_difference(400, 0.0) == 0.0


def test_a_true_difference_of_the_mde_is_detected_with_the_stated_power():
    """Simulated paired t-tests at the MDE reject in about 80% of the weeks (seeded)."""
    n, sd = 60, 0.1
    mde = minimum_detectable_difference(n, sd)
    weeks = np.random.default_rng(1).normal(mde, sd, size=(4000, n))
    rejected = stats.ttest_1samp(weeks, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8, abs=0.03)


@pytest.mark.parametrize("n,sd", [(0, 0.1), (1, 0.1), (50, math.nan)])
def test_too_little_evidence_has_no_finite_mde(n, sd):
    assert minimum_detectable_difference(n, sd) == math.inf


@pytest.mark.parametrize("alpha,power", [(0.0, 0.8), (1.0, 0.8), (0.05, 0.0), (0.05, 1.0)])
def test_alpha_and_power_must_be_probabilities(alpha, power):
    with pytest.raises(ValueError, match="alpha and power"):
        minimum_detectable_difference(50, 0.1, alpha, power)


def test_power_of_paired_scores_uses_the_scatter_of_the_differences_not_of_the_scores():
    """Users differ a lot, the two models differ by the same amount for each: nothing to resolve, MDE 0."""
    users = RNG.uniform(0, 1, 80)
    p = power_of(PairedScores(users + 0.01, users), 0.05, 0.8)
    assert p.n_users == 80 and p.sd == pytest.approx(0.0, abs=1e-12) and p.mde == pytest.approx(0.0, abs=1e-10)
    noisy = users + RNG.normal(0, 0.1, 80)
    p = power_of(PairedScores(noisy, users), 0.05, 0.8)
    assert p.mde == pytest.approx(minimum_detectable_difference(80, float(np.std(noisy - users, ddof=1))))


def test_paired_scores_need_the_same_users():
    with pytest.raises(ValueError, match="same users"):
        PairedScores(np.zeros(3), np.zeros(4))


def test_pooling_concatenates_the_windows_pairs_newest_first():
    a = PairedScores(np.array([0.5, 0.6]), np.array([0.4, 0.6]), "w3")
    b = PairedScores(np.array([0.2]), np.array([0.3]), "w2")
    pooled = pool([a, b])
    assert pooled.differences.tolist() == pytest.approx([0.1, 0.0, -0.1]) and pooled.window == "w3+w2"
    with pytest.raises(ValueError):
        pool([])


def week(n: int, seed: int, name: str) -> PairedScores:
    rng = np.random.default_rng(seed)
    champion = rng.uniform(0, 1, n)
    return PairedScores(champion + rng.normal(0.01, 0.1, n), champion, name)


def test_a_well_powered_window_stands_alone():
    newest = week(400, 0, "w4")
    chosen = evidence(newest, [week(400, 1, "w3")], max_windows=3, pool_above=0.02, alpha=0.05, power=0.8)
    assert [w.window for w in chosen] == ["w4"]


def test_an_underpowered_window_pools_earlier_ones_until_the_mde_is_low_enough():
    newest, earlier = week(60, 0, "w4"), [week(60, 1, "w3"), week(60, 2, "w2"), week(60, 3, "w1")]
    alone = power_of(newest, 0.05, 0.8).mde
    assert alone > 0.035
    chosen = evidence(newest, earlier, max_windows=4, pool_above=0.022, alpha=0.05, power=0.8)
    assert [w.window for w in chosen] == ["w4", "w3", "w2"]  # newest first, no more than needed
    assert power_of(pool(chosen), 0.05, 0.8).mde <= 0.022 < power_of(pool(chosen[:2]), 0.05, 0.8).mde


def test_pooling_stops_at_max_windows_and_max_windows_1_never_pools():
    newest, earlier = week(40, 0, "w4"), [week(40, 1, "w3"), week(40, 2, "w2")]
    def chosen(earlier: list[PairedScores], max_windows: int) -> list[str]:
        found = evidence(newest, earlier, max_windows=max_windows, pool_above=0.001, alpha=0.05, power=0.8)
        return [w.window for w in found]

    assert chosen(earlier, 2) == ["w4", "w3"]
    assert chosen(earlier, 1) == chosen([], 3) == ["w4"]
