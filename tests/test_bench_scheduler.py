"""Fast checks of the scheduler benchmark's bookkeeping (no training)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
_spec = importlib.util.spec_from_file_location("bench_scheduler", BENCH / "scheduler.py")
scheduler = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scheduler)


def grid(regime: str, schedule: str, rate: float, seed: int, ndcg: float, val: float | None = None) -> dict:
    """A grid run scored ``ndcg`` on test; its best validation is ``val`` (default: its test score)."""
    return {"regime": regime, "method": "grid", "schedule": schedule, "rate": rate, "seed": seed, "ndcg10": ndcg,
            "val_curve": [(ndcg if val is None else val) / 2, ndcg if val is None else val]}


def adaptive(regime: str, seed: int, ndcg: float, events: list[dict] | None = None) -> dict:
    return {"regime": regime, "method": "adaptive", "seed": seed, "ndcg10": ndcg, "event_log": events or []}


def by_key(runs: list[dict]) -> dict[str, dict]:
    return {scheduler.key(r): r for r in runs}


MAIN = by_key([
    # best on test (mean 0.14), second by validation (mean 0.15)
    grid("sparse", "cosine", 8.0, 0, 0.15, 0.16), grid("sparse", "cosine", 8.0, 1, 0.13, 0.14),
    # best mean validation (0.155): picked by a grid search that may not see test
    grid("sparse", "step", 4.0, 0, 0.14, 0.15), grid("sparse", "step", 4.0, 1, 0.12, 0.16),
    adaptive("sparse", 0, 0.12), adaptive("sparse", 1, 0.13),
])


def test_every_run_is_scored_at_its_best_validated_epoch():
    curve = [(0.10, 0.11), (0.30, 0.14), (0.25, 0.18), (0.30, 0.20)]  # (validation, test) per epoch
    assert scheduler.best_validated(curve) == 0.14  # not the last epoch's 0.20, nor the best test 0.20; first on ties


def test_the_grid_spans_the_rates_the_probe_races_and_plateau_can_act_within_the_budget():
    from recsys_retrain.settings import ScheduleSettings

    assert set(ScheduleSettings().probe_rates) <= set(scheduler.GRID_RATES)
    assert scheduler.PLATEAU_PATIENCE + 1 < scheduler.EPOCHS // 2  # can cut the rate at least twice


def test_the_held_out_seeds_rerun_adaptive_and_the_configuration_picked_by_validation_on_the_main_seeds():
    tasks = scheduler.tasks_heldout(MAIN, ["sparse", "drifted"], (5, 6))
    assert tasks == [
        {"regime": "sparse", "method": "adaptive", "seed": 5},
        {"regime": "sparse", "method": "grid", "schedule": "step", "rate": 4.0, "seed": 5},
        {"regime": "sparse", "method": "adaptive", "seed": 6},
        {"regime": "sparse", "method": "grid", "schedule": "step", "rate": 4.0, "seed": 6},
    ]  # drifted has no main runs yet: nothing to hold out


def test_the_held_out_ratio_compares_the_same_seeds_only():
    held = by_key([
        adaptive("sparse", 5, 0.15), grid("sparse", "step", 4.0, 5, 0.12),
        adaptive("sparse", 6, 0.11), grid("sparse", "step", 4.0, 6, 0.14),
        adaptive("sparse", 7, 0.20),  # its grid run is missing (stopped benchmark): left out
        grid("sparse", "cosine", 8.0, 5, 0.30),  # not the picked configuration
    ])
    out = scheduler.summarise_heldout(MAIN, held)["sparse"]
    assert out["seeds"] == [5, 6] and out["grid_config"] == ["step", 4.0]
    assert round(out["adaptive_ndcg10"], 6) == 0.13 and round(out["grid_config_ndcg10"], 6) == 0.13
    assert round(out["ratio"], 6) == 1.0 and out["passed"]
    assert out["ci95"] is None  # two seeds: no interval
    assert scheduler.summarise_heldout(MAIN, {}) == {}


def held_out(adaptive_scores: list[float], grid_scores: list[float]) -> dict:
    runs = []
    for seed, (a, g) in enumerate(zip(adaptive_scores, grid_scores), start=10):
        runs += [adaptive("sparse", seed, a), grid("sparse", "step", 4.0, seed, g)]
    return scheduler.summarise_heldout(MAIN, by_key(runs))["sparse"]


def test_the_held_out_goal_is_read_with_a_paired_interval_and_can_fail():
    base = [0.10, 0.12, 0.14, 0.16, 0.18, 0.11, 0.13, 0.15, 0.17, 0.19]
    worse = held_out([g * 0.95 for g in base], base)  # adaptive 5% worse on every seed
    assert round(worse["ratio"], 6) == 0.95 and not worse["passed"] and worse["adaptive_wins"] == 0
    assert worse["ci95"][1] < 0.99 and not worse["within_noise"]  # paired: a steady 5% loss is not noise

    noisy = held_out([g * (0.93 if i % 2 else 1.04) for i, g in enumerate(base)], base)  # misses, seeds disagree
    assert noisy["ratio"] < 0.99 and not noisy["passed"]
    assert noisy["ci95"][0] < noisy["ratio"] < noisy["ci95"][1] and noisy["within_noise"]

    better = held_out([g * 1.02 for g in base], base)
    assert better["passed"] and better["ci95"][0] > 1.0 and better["diff"] > 0


def test_warm_starts_run_again_when_an_adaptive_record_they_were_built_from_changed(monkeypatch):
    record = {"regime": "drifted", "dense_lr": 0.08}
    done = by_key([{**adaptive("drifted", 0, 0.14), "record": record}])
    (task,) = [t for t in scheduler.tasks_warm(done, (0,)) if t["regime"] == "sparse"]
    assert task["kb"] == [record]
    done[scheduler.key(task)] = {**task, "kb_digest": scheduler.kb_digest([record])}  # finished earlier
    to_run = []
    monkeypatch.setattr(scheduler, "tasks_main", lambda seeds: [])
    monkeypatch.setattr(scheduler, "execute", lambda tasks, workers, done: to_run.append(
        sorted(t["regime"] for t in tasks if scheduler.key(t) not in done)))

    scheduler.run_all(1, done, ["sparse"], seeds=(0,))
    assert to_run[-1] == ["drifted", "movielens"]  # sparse's warm start matches its knowledge base: resumed

    rerun = adaptive("drifted", 0, 0.15)  # e.g. re-run alone
    done[scheduler.key(rerun)] = {**rerun, "record": {**record, "dense_lr": 0.04}}
    scheduler.run_all(1, done, ["sparse"], seeds=(0,))
    assert to_run[-1] == ["drifted", "movielens", "sparse"]  # built from the old record: run again


def test_the_grid_search_picked_by_validation_is_reported_beside_the_grid_best():
    def run(schedule: str, seed: int, test: float, validation: float) -> dict:
        return {**grid("drifted", schedule, 4.0, seed, test), "epochs": 1, "val_curve": [validation],
                "test_curve": [test]}

    runs = by_key([
        run("constant", 0, 0.16, 0.19), run("constant", 1, 0.16, 0.20),  # best on test
        run("cosine", 0, 0.14, 0.21), run("cosine", 1, 0.15, 0.21),  # best by validation
        {**adaptive("drifted", 0, 0.15), "epochs": 8, "val_curve": [0.2], "test_curve": [0.15], "step_s": 1.0,
         "scheduler_s": 0.01, "train_s": 1.0},
    ])
    reg = scheduler.summarise(runs)["regimes"]["drifted"]
    assert reg["grid_best_config"] == ["constant", 4.0] and reg["grid_val_picked_config"] == ["cosine", 4.0]
    assert round(reg["grid_val_picked_ndcg10"], 6) == 0.145
    assert reg["grid_validation"] == {"constant@x4.0": 0.195, "cosine@x4.0": 0.21}
    assert round(reg["goals"]["grid_val_picked_vs_grid_best"], 6) == round(0.145 / 0.16, 6)
    assert round(reg["goals"]["ndcg_vs_grid_val_picked"], 6) == round(0.15 / 0.145, 6)
    assert reg["validation_test_corr"]["grid"] < 0  # cosine reads higher on validation, lower on test


def test_validation_test_agreement_is_the_correlation_over_every_epoch():
    def curves(val: list[float], test: list[float]) -> dict:
        return {"val_curve": val, "test_curve": test}

    assert round(scheduler.agreement([curves([0.1, 0.2], [0.1, 0.2]), curves([0.3], [0.3])]), 6) == 1.0
    assert round(scheduler.agreement([curves([0.1, 0.2, 0.3], [0.3, 0.2, 0.1])]), 6) == -1.0
    assert scheduler.agreement([curves([0.1, 0.2], [0.1, 0.2])]) is None  # too few epochs
    assert scheduler.agreement([curves([0.2, 0.2, 0.2], [0.1, 0.2, 0.3])]) is None  # flat validation


def test_a_summary_of_earlier_runs_keeps_the_machine_they_ran_on(tmp_path, monkeypatch):
    monkeypatch.setattr(scheduler, "RESULTS", tmp_path)
    monkeypatch.setattr(scheduler, "plot", lambda summary, done, path: None)
    empty = {"regimes": {}, "overhead": None, "kb_warm_vs_cold_epochs_ratio": None, "kb_pairs_compared": 0}
    monkeypatch.setattr(scheduler, "summarise", lambda done: empty)
    monkeypatch.setattr(scheduler, "machine", lambda: {"cpu": "this one"})
    (tmp_path / "scheduler.json").write_text('{"machine": {"cpu": "where the runs ran"}, "bench_s": 3000.0}')

    scheduler.finish({}, 0.0, ran=False)
    written = json.loads((tmp_path / "scheduler.json").read_text())
    assert written["machine"] == {"cpu": "where the runs ran"} and written["bench_s"] == 3000.0
    assert written["summarised_on"] == {"cpu": "this one"}

    scheduler.finish({}, 0.0)  # runs measured now: this machine
    assert json.loads((tmp_path / "scheduler.json").read_text())["machine"] == {"cpu": "this one"}


def test_the_machine_names_the_cpu_generation_and_the_kernels_torch_dispatches_to():
    import torch

    cpu = scheduler.machine()
    assert {"cpu", "family", "model", "cpu_capability", "cores", "torch"} <= cpu.keys()
    assert cpu["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    if Path("/proc/cpuinfo").exists():  # Linux: the generation is read, not left blank
        assert cpu["family"] and cpu["model"]
