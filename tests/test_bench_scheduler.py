"""Fast checks of the scheduler benchmark's bookkeeping (no training)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
_spec = importlib.util.spec_from_file_location("bench_scheduler", BENCH / "scheduler.py")
scheduler = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scheduler)


def grid(regime: str, schedule: str, rate: float, seed: int, ndcg: float) -> dict:
    return {"regime": regime, "method": "grid", "schedule": schedule, "rate": rate, "seed": seed, "ndcg10": ndcg}


def adaptive(regime: str, seed: int, ndcg: float, events: list[dict] | None = None) -> dict:
    return {"regime": regime, "method": "adaptive", "seed": seed, "ndcg10": ndcg, "event_log": events or []}


def by_key(runs: list[dict]) -> dict[str, dict]:
    return {scheduler.key(r): r for r in runs}


MAIN = by_key([
    grid("sparse", "step", 4.0, 0, 0.15), grid("sparse", "step", 4.0, 1, 0.13),  # mean 0.14: picked
    grid("sparse", "constant", 4.0, 0, 0.16), grid("sparse", "constant", 4.0, 1, 0.10),  # best single run, mean 0.13
    adaptive("sparse", 0, 0.12), adaptive("sparse", 1, 0.13),
])


def test_the_held_out_seeds_rerun_adaptive_and_the_configuration_picked_on_the_main_seeds():
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
        grid("sparse", "constant", 4.0, 5, 0.30),  # not the picked configuration
    ])
    out = scheduler.summarise_heldout(MAIN, held)["sparse"]
    assert out["seeds"] == [5, 6] and out["grid_config"] == ["step", 4.0]
    assert round(out["adaptive_ndcg10"], 6) == 0.13 and round(out["grid_config_ndcg10"], 6) == 0.13
    assert round(out["ratio"], 6) == 1.0
    assert scheduler.summarise_heldout(MAIN, {}) == {}


def test_runs_whose_batch_size_moved_on_a_throughput_cue_are_listed():
    runs = [
        adaptive("drifted", 1, 0.15, [{"trigger": "throughput"}]),
        adaptive("movielens", 0, 0.19, [{"trigger": "rate_probe"}, {"trigger": "validation_plateau"}]),
        {**adaptive("movielens", 0, 0.19, [{"trigger": "memory"}]), "method": "ablation", "off": "curvature"},
    ]
    assert scheduler.resource_changes(runs) == ["drifted adaptive seed 1", "movielens ablation curvature seed 0"]


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

    rerun = adaptive("drifted", 0, 0.15)  # e.g. re-run alone after a resource change
    done[scheduler.key(rerun)] = {**rerun, "record": {**record, "dense_lr": 0.04}}
    scheduler.run_all(1, done, ["sparse"], seeds=(0,))
    assert to_run[-1] == ["drifted", "movielens", "sparse"]  # built from the old record: run again


def test_the_grid_search_picked_by_validation_is_reported_beside_the_grid_best():
    def run(schedule: str, seed: int, test: float, validation: float) -> dict:
        return {**grid("drifted", schedule, 4.0, seed, test), "epochs": 1, "val_curve": [validation],
                "test_curve": [test]}

    runs = by_key([
        run("constant", 0, 0.16, 0.19), run("constant", 1, 0.16, 0.20),  # best on test
        run("cosine", 0, 0.14, 0.21), run("cosine", 1, 0.15, 0.21),  # best by the last epoch's validation
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
    assert round(reg["grid_best_config_val_epoch_ndcg10"], 6) == 0.16  # one epoch each: the last


def test_the_grid_best_is_also_scored_at_each_runs_best_validated_epoch():
    def run(seed: int, val: list[float], test: list[float]) -> dict:
        return {**grid("sparse", "step", 4.0, seed, test[-1]), "epochs": 3, "val_curve": val, "test_curve": test}

    runs = by_key([
        run(0, [0.1, 0.3, 0.2], [0.1, 0.12, 0.15]),  # best validated at epoch 2: 0.12
        run(1, [0.3, 0.1, 0.2], [0.2, 0.1, 0.13]),  # at epoch 1: 0.20
        {**adaptive("sparse", 0, 0.12), "epochs": 3, "val_curve": [0.2], "test_curve": [0.12], "step_s": 1.0,
         "scheduler_s": 0.01, "train_s": 1.0},
    ])
    reg = scheduler.summarise(runs)["regimes"]["sparse"]
    assert round(reg["grid_best_ndcg10"], 6) == 0.14 and round(reg["grid_best_config_val_epoch_ndcg10"], 6) == 0.16


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


def test_goal_power_is_certain_for_an_equal_method_against_a_noiseless_grid():
    runs = by_key([grid("movielens", "constant", 4.0, s, 0.18) for s in range(5)]
                  + [grid("movielens", "cosine", 4.0, s, 0.15) for s in range(5)])
    power = scheduler.goal_power(runs, {}, draws=2000)["movielens"]
    assert power["grid_config"] == ["constant", 4.0] and power["seeds"] == 5 and power["equal_runs"] == 5
    assert power["pass_rate"] == 1.0 and power["uplift_for_90"] == 1.0


def test_goal_power_counts_the_grid_bests_selection_among_noisy_configurations():
    values = [0.13, 0.17, 0.15, 0.12, 0.18]
    runs = by_key([grid("drifted", "constant", 4.0, s, v) for s, v in enumerate(values)]
                  + [grid("drifted", "step", 4.0, s, v) for s, v in enumerate(reversed(values))])
    power = scheduler.goal_power(runs, {}, draws=4000)["drifted"]
    assert 0.2 < power["pass_rate"] < 0.8  # equal in quality, yet the picked best of two noisy means is higher
    assert power["uplift_for_90"] is not None and power["uplift_for_90"] > 1.0

    # held-out runs of the picked configuration join the equal method's pool: here they are worse, so it passes less
    held = by_key([grid("drifted", "constant", 4.0, s, 0.12) for s in range(5, 10)])
    worse = scheduler.goal_power(runs, held, draws=4000)["drifted"]
    assert worse["equal_runs"] == 10 and worse["pass_rate"] < power["pass_rate"]
    assert scheduler.goal_power(by_key([grid("sparse", "step", 4.0, 0, 0.1)]), {}) == {}  # one seed: no estimate
