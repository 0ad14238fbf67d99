"""The gate's decision policies on constructed per-user scores: when each promotes, and that none lets a bad model in.

Each case builds a champion's per-user NDCG@10 and a challenger's as champion +
a known mean gain + per-user noise (mean exactly the stated gain), and runs the whole
gate (:func:`recsys_retrain.gate.decide`: bootstrap, MDE, policy, guardrails).
"""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest

from recsys_retrain.gate import decide
from recsys_retrain.gate_policies import POLICIES, Evidence, margin, policy_checks
from recsys_retrain.power import minimum_detectable_difference
from recsys_retrain.settings import GateSettings
from tests.test_gate import ev

N = 400
CHAMPION = np.clip(np.random.default_rng(0).normal(0.3, 0.2, N), 0, 1)


def challenger(gain: float, noise: float, n: int = N, seed: int = 1) -> np.ndarray:
    """The champion's scores plus per-user noise of sd ``noise`` whose mean is exactly ``gain``."""
    e = np.random.default_rng(seed).normal(0, noise, n) if noise else np.zeros(n)
    return CHAMPION[:n] + e - e.mean() + gain


CASES = {  # name: (mean gain, per-user noise)
    "clearly better": (0.05, 0.1),
    "equal": (0.0, 0.1),
    "slightly worse within noise": (-0.003, 0.25),
    "clearly worse": (-0.05, 0.1),
}
EXPECTED = {  # policy: the cases it promotes
    "non_inferiority": {"clearly better"},
    "superiority": {"clearly better"},
    "fresher_unless_worse": {"clearly better", "equal", "slightly worse within noise"},
}


def gate(policy: str, gain: float, noise: float, n: int = N, **settings):
    s = GateSettings(policy=policy, min_ndcg=0.02, **settings)
    # guardrails neutral (same recall, empty segments): only the policy decides
    same = dict(recall=CHAMPION[:n] * 0.8, cold=np.zeros(n, bool), longtail=np.full(n, np.nan))
    return decide(ev(challenger(gain, noise, n), **same), ev(CHAMPION[:n], **same), s,
                  challenger_version=2, champion_version=1, window="a/b")


@pytest.mark.parametrize("derived", [False, True], ids=["fixed-margin", "margin-from-mde"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("policy", EXPECTED)
def test_each_policy_promotes_exactly_its_cases(policy, case, derived):
    d = gate(policy, *CASES[case], **({"margin_mde_fraction": 0.5} if derived else {}))
    assert d.promote == (case in EXPECTED[policy]), d.reason
    assert d.policy == policy and d.mde is not None and d.mde > 0


@pytest.mark.parametrize("policy", EXPECTED)
def test_every_policy_rejects_a_challenger_clearly_worse_beyond_the_noise(policy):
    d = gate(policy, -0.05, 0.1)
    assert d.ci_high < 0 and not d.promote


@pytest.mark.parametrize("policy", EXPECTED)
def test_a_large_drop_is_rejected_even_when_a_small_week_cannot_show_it(policy):
    """40 noisy users: the interval reaches above 0, yet a mean drop of 0.04 never passes (the margin is capped)."""
    d = gate(policy, -0.04, 0.25, n=40, margin_mde_fraction=0.5)
    assert d.ci_high > 0 and d.mde > 0.1 and not d.promote
    if policy == "fresher_unless_worse":
        assert {c.name for c in d.failed} == {"within_margin"} and d.margin == 0.02
        assert "capped" in d.reason


def test_a_real_gain_the_fixed_margin_blocks_passes_with_a_margin_that_follows_the_noise():
    """The replay's case: +0.012 on a 60-user week. Non-inferiority at 0.005 blocks it; 0.5 x MDE does not."""
    fixed = gate("non_inferiority", 0.012, 0.1, n=60)
    assert not fixed.promote and {c.name for c in fixed.failed} == {"non_inferior"}
    assert fixed.mean_delta < fixed.mde  # "could not tell", not "not better"
    derived = gate("non_inferiority", 0.012, 0.1, n=60, margin_mde_fraction=0.5)
    assert derived.promote and derived.margin == pytest.approx(0.5 * derived.mde)
    assert "x MDE" in next(c.detail for c in derived.checks if c.name == "non_inferior")
    assert gate("fresher_unless_worse", 0.012, 0.1, n=60).promote
    assert not gate("superiority", 0.012, 0.1, n=60).promote


def test_each_policy_names_its_checks():
    names = {p: [c.name for c in policy_checks(Evidence(0.01, -0.01, 0.03, 100, 0.1, 0.03), GateSettings(policy=p))]
             for p in EXPECTED}
    assert names == {
        "non_inferiority": ["mean_gain", "non_inferior"],
        "superiority": ["mean_gain", "superior"],
        "fresher_unless_worse": ["not_worse", "within_margin"],
    }


def test_the_margin_is_the_tolerance_or_a_capped_fraction_of_the_mde():
    e = Evidence(0.0, -0.01, 0.01, 100, 0.1, 0.03)
    assert margin(e, GateSettings(tolerance=0.004)) == 0.004
    assert margin(e, GateSettings(margin_mde_fraction=0.5)) == pytest.approx(0.015)
    assert margin(e, GateSettings(margin_mde_fraction=2.0, max_margin=0.02)) == 0.02
    unresolved = Evidence(0.0, 0.0, 0.0, 1, math.nan, math.inf)
    assert margin(unresolved, GateSettings(margin_mde_fraction=0.5)) == GateSettings().max_margin


def test_the_default_policy_is_the_rule_the_gate_has_been_running():
    s = GateSettings()
    assert s.policy == "non_inferiority" and s.margin_mde_fraction is None and s.pool_windows == 1
    assert "backtest" in GateSettings.model_fields["policy"].description


def test_the_setting_offers_exactly_the_implemented_policies():
    assert set(typing.get_args(GateSettings.model_fields["policy"].annotation)) == set(POLICIES)


def test_the_recorded_mde_is_that_of_the_paired_differences():
    d = gate("non_inferiority", 0.01, 0.1)
    diff = challenger(0.01, 0.1) - CHAMPION
    assert d.sd_delta == pytest.approx(float(np.std(diff, ddof=1)))
    assert d.mde == pytest.approx(minimum_detectable_difference(N, d.sd_delta, 0.05, 0.8))
