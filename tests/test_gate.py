"""The significance gate as a pure function: per-user arrays in, a decision with reasons out."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pydantic
import pytest
import torch

from recsys_retrain.evaluate import UserEval, evaluate, long_tail_items, user_metrics
from recsys_retrain.gate import GateDecision, decide, paired_bootstrap
from recsys_retrain.power import PairedScores, minimum_detectable_difference
from recsys_retrain.settings import GateSettings

N = 400  # holdout users
RNG = np.random.default_rng(0)
BASE = np.clip(RNG.normal(0.3, 0.2, N), 0, 1)
COLD = np.arange(N) % 4 == 0  # 100 cold users
TAIL = np.where(np.arange(N) % 2 == 0, np.clip(RNG.normal(0.1, 0.1, N), 0, 1), np.nan)  # 200 long-tail users
S = GateSettings(min_ndcg=0.02, tolerance=0.005, min_delta=0.0)


def ev(ndcg=BASE, recall=None, coverage=0.3, longtail=TAIL, cold=COLD) -> UserEval:
    ndcg = np.asarray(ndcg, float)
    return UserEval(
        k=10, user_ids=np.arange(len(ndcg)), ndcg=ndcg, recall=ndcg * 0.8 if recall is None else np.asarray(recall),
        is_cold=cold, longtail_ndcg=np.asarray(longtail, float), coverage=coverage, n_items=1000,
    )


def failed(d: GateDecision) -> set[str]:
    return {c.name for c in d.failed}


def test_a_clearly_better_challenger_is_promoted_with_every_number_recorded():
    d = decide(ev(BASE + 0.05), ev(), S, challenger_version=2, champion_version=1, window="a/2024-01-08")
    assert d.promote and not d.failed
    assert d.mean_delta == pytest.approx(0.05) and d.ci_low > 0.04 and d.ci_high < 0.06
    assert d.n_resamples == 1000 and d.n_users == N and d.seed == 0 and d.confidence == 0.95
    assert {c.name for c in d.checks} == {
        "finite", "floor", "mean_gain", "non_inferior", "recall", "coverage", "cold_users", "long_tail",
    }
    assert "all guardrails hold" in d.reason and "+0.0500" in d.reason


def test_a_lucky_challenger_with_a_small_noisy_gain_is_not_promoted():
    """Mean gain > 0 (a single-number gate would promote it) but the interval reaches far below -tolerance."""
    noise = RNG.normal(0, 0.25, N)
    noise -= noise.mean() - 0.003
    d = decide(ev(BASE + noise), ev(), S, challenger_version=2, champion_version=1)
    assert d.mean_delta == pytest.approx(0.003)
    assert not d.promote and failed(d) == {"non_inferior"}
    assert "lower bound" in d.reason and "-tolerance -0.0050" in d.reason


def test_a_worse_challenger_fails_the_mean_gain():
    d = decide(ev(BASE - 0.02), ev(), S)
    assert not d.promote and {"mean_gain", "non_inferior"} <= failed(d)
    assert "gain -0.0200 < min_delta" in d.reason


def test_min_delta_demands_a_real_gain():
    d = decide(ev(BASE + 0.01), ev(), S.model_copy(update={"min_delta": 0.02}))
    assert not d.promote and failed(d) == {"mean_gain"}


def test_a_gain_beyond_min_delta_is_promoted():
    d = decide(ev(BASE + 0.03), ev(), S.model_copy(update={"min_delta": 0.02}))
    assert d.promote and not d.failed and d.mean_delta == pytest.approx(0.03)
    assert "gain +0.0300 >= min_delta 0.0200" in next(c.detail for c in d.checks if c.name == "mean_gain")


@pytest.mark.parametrize(
    "challenger,check",
    [
        (ev(BASE + 0.02, recall=BASE * 0.8 - 0.05), "recall"),
        (ev(BASE + 0.02, coverage=0.2), "coverage"),
        (ev(np.where(COLD, BASE - 0.1, BASE + 0.05)), "cold_users"),
        (ev(BASE + 0.02, longtail=TAIL - 0.05), "long_tail"),
    ],
    ids=["recall", "coverage", "cold-users", "long-tail"],
)
def test_each_guardrail_alone_blocks_a_challenger_that_wins_on_ndcg(challenger, check):
    d = decide(challenger, ev(), S)
    assert d.mean_delta > 0 and not d.promote
    assert failed(d) == {check}
    assert next(c for c in d.checks if c.name == check).detail in d.reason


def test_a_segment_with_too_few_users_is_reported_not_checked():
    few_cold = np.arange(N) < 5
    d = decide(ev(np.where(few_cold, 0.0, BASE + 0.03), cold=few_cold), ev(cold=few_cold), S)
    assert d.promote
    cold = next(c for c in d.checks if c.name == "cold_users")
    assert cold.passed and "5 users < 20, not checked" in cold.detail


def test_first_model_must_clear_the_absolute_floor():
    assert decide(ev(), None, S).promote
    low = decide(ev(np.full(N, 0.01)), None, S)
    assert not low.promote and failed(low) == {"floor"} and "< floor 0.0200" in low.reason
    assert low.champion_value is None and low.mean_delta is None


def test_the_floor_applies_even_when_the_champion_is_worse():
    d = decide(ev(np.full(N, 0.015)), ev(np.full(N, 0.005)), S)
    assert not d.promote and failed(d) == {"floor"}


def test_an_unloadable_challenger_is_rejected_with_the_error():
    d = decide(None, ev(), S, challenger_version=3, load_error="UnpicklingError: invalid load key")
    assert not d.promote and failed(d) == {"loadable"}
    assert "cannot be loaded: UnpicklingError" in d.reason and math.isnan(d.challenger_value)


def test_non_finite_metrics_never_promote():
    d = decide(ev(np.full(N, np.nan)), ev(), S)
    assert not d.promote and failed(d) == {"finite"}


@pytest.mark.parametrize("champion", [None, ev()], ids=["first-model", "against-a-champion"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_a_non_finite_challenger_never_promotes_not_even_as_the_first_model(value, champion):
    d = decide(ev(np.full(N, value)), champion, S)
    assert not d.promote and failed(d) == {"finite"} and f"is {value}" in d.reason


def test_a_non_finite_champion_metric_never_lets_the_challenger_through():
    d = decide(ev(BASE + 0.05), ev(np.full(N, np.nan)), S, challenger_version=2, champion_version=1)
    assert not d.promote and {"mean_gain", "non_inferior"} <= failed(d) and math.isnan(d.champion_value)


def test_a_reverted_version_returns_only_on_evidence_from_a_later_window():
    reverted = "2024-01-01T00:00:00+00:00/2024-01-08T00:00:00+00:00"
    same = decide(ev(BASE + 0.05), ev(), S, window=reverted, reverted_on=reverted)
    assert not same.promote and failed(same) == {"not_reverted"} and "cannot return" in same.reason
    later = decide(ev(BASE + 0.05), ev(), S, window="2024-01-08T00:00:00+00:00/2024-01-15T00:00:00+00:00",
                   reverted_on=reverted)
    assert later.promote


def test_champion_and_challenger_must_share_the_holdout_users():
    with pytest.raises(ValueError, match="different holdout users"):
        decide(ev(), ev(BASE[:-1], cold=COLD[:-1], longtail=TAIL[:-1]), S)


def test_bootstrap_is_seeded_and_needs_1000_resamples():
    a, b = BASE + RNG.normal(0, 0.1, N), BASE
    assert paired_bootstrap(a, b, 1000, 7, 0.95) == paired_bootstrap(a, b, 1000, 7, 0.95)
    assert paired_bootstrap(a, b, 1000, 7, 0.95) != paired_bootstrap(a, b, 1000, 8, 0.95)
    with pytest.raises(pydantic.ValidationError):
        GateSettings(n_resamples=999)


def test_pairing_removes_between_user_noise():
    """Users differ a lot, models differ a little but consistently: the paired interval excludes 0."""
    iv = paired_bootstrap(BASE + 0.01, BASE, 1000, 0, 0.95)
    assert iv.low == pytest.approx(0.01) and iv.high == pytest.approx(0.01)


def test_every_decision_records_the_mde_of_the_users_it_rests_on():
    noise = RNG.normal(0, 0.1, N)
    d = decide(ev(BASE + noise - noise.mean() + 0.05), ev(), S, window="w")
    sd = float(np.std(noise, ddof=1))
    assert d.sd_delta == pytest.approx(sd) and d.mde == pytest.approx(minimum_detectable_difference(N, sd))
    assert d.window_mde == d.mde and d.evidence_users == N and d.evidence_windows == ("w",)
    assert d.policy == "non_inferiority" and d.margin == S.tolerance and d.power == 0.8
    assert f"MDE {d.mde:.4f}" in d.reason
    first = decide(ev(), None, S)
    assert first.promote and first.mde is None  # nothing to compare: no power to speak of


def small_week(gain: float, seed: int, n: int = 50) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    champion = rng.uniform(0, 0.6, n)
    noise = rng.normal(0, 0.1, n)
    return champion + noise - noise.mean() + gain, champion


def test_an_underpowered_window_pools_earlier_windows_of_the_same_champion():
    new, old = small_week(0.015, 0)
    earlier = [PairedScores(*small_week(0.015, seed), f"w{seed}") for seed in (1, 2, 3)]
    cold, tail = np.zeros(50, bool), np.full(50, np.nan)
    args = (ev(new, cold=cold, longtail=tail), ev(old, cold=cold, longtail=tail))
    alone = decide(*args, S, window="w0", earlier=earlier)  # pool_windows 1: the default never pools
    assert alone.evidence_windows == ("w0",) and alone.evidence_users == 50 and not alone.promote
    pooled = decide(*args, S.model_copy(update={"pool_windows": 4, "pool_above_mde": 0.02}), window="w0", earlier=earlier)
    assert pooled.evidence_windows == ("w0", "w1", "w2", "w3") and pooled.evidence_users == 200
    assert pooled.mde < alone.mde == pooled.window_mde
    assert pooled.ci_high - pooled.ci_low < alone.ci_high - alone.ci_low
    assert "over 4 windows (200 users)" in pooled.reason or "in 4 windows" in pooled.reason
    assert pooled.promote  # +0.015 on 200 users clears a 0.005 margin; on 50 it could not


def test_decision_and_user_eval_round_trip_through_json():
    d = decide(ev(BASE + 0.05), ev(), S, challenger_version=2, champion_version=1, window="w")
    assert GateDecision.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    e = ev()
    assert UserEval.from_dict(json.loads(json.dumps(e.to_dict()))) == e


# --- per-user metrics on a tiny world -------------------------------------------------


class FixedScores:
    """Every user ranks item 40 > 30 > 20 > 10."""

    catalogue = pd.DataFrame({"item_id": [10, 20, 30, 40]})

    def score(self, users: pd.DataFrame, history: pd.DataFrame | None = None) -> torch.Tensor:
        return torch.tensor([[1.0, 2.0, 3.0, 4.0]]).repeat(len(users), 1)


def frame(rows):
    return pd.DataFrame([
        {"user_id": u, "item_id": i, "timestamp": pd.Timestamp(t, tz="UTC"), "user_gender": "F", "user_age": 30,
         "user_occupation": "x"}
        for u, i, t in rows
    ])


def test_long_tail_is_everything_outside_the_popularity_head():
    history = frame([(1, 40, "2020-01-01"), (2, 40, "2020-01-01"), (3, 40, "2020-01-01"), (1, 30, "2020-01-01")])
    assert long_tail_items(history, pd.Index([10, 20, 30, 40]), 0.5).tolist() == [True, True, True, False]


def test_user_metrics_agree_with_evaluate_and_add_segments_and_coverage():
    history = frame([(1, 40, "2020-01-01"), (2, 40, "2020-01-01"), (3, 40, "2020-01-01")])
    holdout = frame([(1, 10, "2020-01-08"), (2, 30, "2020-01-08"), (9, 40, "2020-01-08"), (3, 40, "2020-01-08")])
    e = user_metrics(FixedScores(), history, holdout, k=1, head_share=0.5)
    assert e.mean_ndcg == pytest.approx(evaluate(FixedScores(), history, holdout, k=1).ndcg)
    # user 3 only re-watched item 40: no new item, not scored. User 9 is cold.
    assert e.user_ids.tolist() == [1, 2, 9] and e.is_cold.tolist() == [False, False, True]
    assert e.ndcg.tolist() == [0.0, 1.0, 1.0]  # tops: 30 (miss), 30 (hit), 40 (hit)
    # long-tail (items 10, 20, 30): user 1 wants 10, ranked below 30 -> 0; user 2 wants 30 -> 1; user 9 none
    assert e.longtail_ndcg[:2].tolist() == [0.0, 1.0] and math.isnan(e.longtail_ndcg[2])
    assert e.coverage == pytest.approx(2 / 4)  # items 30 and 40 appear in some top-1
    assert e.metrics["cold_ndcg_at_1"] == 1.0 and e.metrics["longtail_ndcg_at_1"] == 0.5


def test_by_default_a_retrain_that_reproduces_the_champion_does_not_replace_it():
    d = decide(ev(), ev(), GateSettings(min_ndcg=0.02))
    assert not d.promote and "< min_delta" in d.reason


def test_an_unloadable_champion_with_nothing_in_its_place_keeps_the_champion():
    d = decide(ev(), None, S, champion_version=4, champion_error="truncated pickle")
    assert not d.promote and "champion v4 cannot be loaded (truncated pickle)" in d.reason
    assert "the champion stays" in d.reason


def test_a_stand_in_for_an_unloadable_champion_is_named_in_the_reason():
    better = ev(np.full(N, 0.9))
    d = decide(better, ev(np.full(N, 0.5)), S, champion_version=3, champion_error="champion v4 cannot be loaded (x)")
    assert d.promote and d.reason.startswith("champion v4 cannot be loaded (x), so judged against v3: ")
    worse = decide(ev(np.full(N, 0.1)), ev(np.full(N, 0.5)), S, champion_version=3, champion_error="champion v4 cannot be loaded (x)")
    assert not worse.promote and "judged against v3" in worse.reason
