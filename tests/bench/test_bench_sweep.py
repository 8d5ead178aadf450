"""The figures and report of ``bench/sweep.py`` from made-up sweep results (no sweep is run)."""

from __future__ import annotations

import pytest

from bench.sweep import (
    RUNNERS,
    differing_trials,
    parse_args,
    phases,
    render_md,
    round_order,
    spread,
    summarise,
    sweep_env,
    verdict,
)


def trial(lr, reg, acc, train_s=1.0):
    metrics = {"best_val_acc": acc, "test_acc": acc - 0.01, "final_train_acc": 1.0}
    where = {"engine": 0.08, "start": 0.02, "run": 0.2, "train": train_s, "return": 0.05}
    return {"params": {"lr": lr, "reg": reg}, "metrics": metrics, "train_s": train_s,
            "phases": where}  # fmt: skip


def sweep(wall, overhead, command, trials):
    return {"run_id": "x", "command_s": command, "sweep_wall_s": wall,
            "trial_overhead_s": overhead, "trials": trials}  # fmt: skip


def grid(acc3=0.97):
    return {0: trial("0.001", "0", 0.9), 3: trial("0.03", "0", acc3)}


def one_round(d1, d2, seq, t1, td, acc3_dask2=0.97):
    return {
        "runs": {
            "dask-1": sweep(d1, 0.1, d1 + 5, grid()),
            "dask-2": sweep(d2, 0.15, d2 + 5, grid(acc3_dask2)),
            "sequential": sweep(seq, 0.05, seq + 3, grid()),
            "trial-1thread": sweep(t1, 0.05, t1 + 3, {2: trial("0.01", "0", 0.95, t1 - 0.5)}),
            "trial-default": sweep(td, 0.05, td + 3, {2: trial("0.01", "0", 0.95, td - 0.5)}),
        }
    }


def test_round_order_alternates():
    assert round_order(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert round_order(["a", "b", "c"], 1) == ["c", "b", "a"]
    assert round_order(["a", "b", "c"], 2) == ["a", "b", "c"]


def test_spread_is_median_with_min_max():
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0,
                                       "values": [3.0, 1.0, 2.0]}  # fmt: skip
    assert spread([1.0, None]) is None
    assert spread([]) is None


def test_verdict():
    assert verdict(1.8, 1.8, at_least=True) == "met"
    assert verdict(1.79, 1.8, at_least=True) == "NOT met"
    assert verdict(0.2, 0.2, at_least=False) == "met"
    assert verdict(0.21, 0.2, at_least=False) == "NOT met"
    assert verdict(1.0, None, at_least=True) == "no target"
    assert verdict(None, 0.2, at_least=False) == "missing"


def test_differing_trials_names_the_trial_and_its_values():
    same = sweep(1.0, 0.1, 2.0, grid())
    assert differing_trials({"a": same, "b": sweep(2.0, 0.2, 3.0, grid())}) == []
    other = sweep(1.0, 0.1, 2.0, grid(acc3=0.96))
    (d,) = differing_trials({"a": same, "b": other})
    assert d["trial"] == 3
    assert d["params"] == {"lr": "0.03", "reg": "0"}
    assert d["metrics"]["a"]["test_acc"] == pytest.approx(0.96)
    assert d["metrics"]["b"]["test_acc"] == pytest.approx(0.95)
    # a trial one runner lacks differs too
    lacking = sweep(1.0, 0.1, 2.0, {0: trial("0.001", "0", 0.9)})
    (d,) = differing_trials({"a": same, "b": lacking})
    assert d["trial"] == 3
    assert d["metrics"]["b"] is None


def test_summary_ratios_against_targets():
    rounds = [
        one_round(20.0, 10.0, 16.0, 12.5, 8.5),  # 2.0x; seq 1.6x; thread 1.5x
        one_round(19.0, 11.0, 15.0, 10.5, 6.5),
        one_round(18.0, 12.0, 14.0, 14.5, 10.5, acc3_dask2=0.96),  # 1.5x; trial 3 differs
    ]
    s = summarise(rounds, 40)
    by_name = {f["figure"]: f for f in s["figures"]}
    speedup = by_name["dask 1 worker / 2 workers, sweep_wall_s"]
    assert speedup["spread"]["median"] == pytest.approx(19 / 11)
    assert (speedup["spread"]["min"], speedup["spread"]["max"]) == pytest.approx((1.5, 2.0))
    assert speedup["target"] == 1.8
    assert speedup["verdict"] == "NOT met"  # 1.727 < 1.8
    assert summarise(rounds, 8)["figures"][0]["verdict"] == "met"  # >= 1.6
    assert summarise(rounds, 1)["figures"][0]["verdict"] == "no target"
    overhead = by_name["trial_overhead_s (s), dask, 2 workers (1 thread each)"]
    assert overhead["spread"]["median"] == pytest.approx(0.15)
    assert overhead["verdict"] == "met"
    threads = by_name["one trial's training time, 1 thread / default threads"]
    assert threads["spread"]["values"] == pytest.approx([1.5, 10 / 6, 14 / 10])
    assert threads["verdict"] == "no target"
    assert s["runners"]["dask-2"]["command_s"]["median"] == pytest.approx(16.0)
    assert s["identical"] is False
    assert [(d["round"], d["trial"]) for d in s["differing"]] == [(3, 3)]


def test_phases_split_a_trials_time_and_skip_a_reopened_run():
    timing = {"submitted": 100.0, "started": 100.2, "returned": 103.0, "train_s": 2.0}
    where = phases(timing, 100_250, 102_700)
    assert where == pytest.approx(
        {"engine": 0.2, "start": 0.05, "run": 0.45, "train": 2.0, "return": 0.3}
    )
    assert sum(where.values()) == pytest.approx(3.0)  # the trial's submit-to-result time
    assert phases(timing, 100_250, 104_000) is None  # reopened after its result (the best)
    assert phases({**timing, "train_s": None}, 100_250, 102_700) is None


def test_report_tables():
    rounds = [one_round(20.0, 10.0, 16.0, 12.5, 8.5)]
    result = {
        "date": "2026-11-30T17:00:00+00:00",
        "machine": {"cpus": 2, "platform": "Linux", "processor": "x86_64"},
        "grid": ["lr=1e-3,3e-3,1e-2,3e-2", "reg=0,1e-3"], "one_trial": ["lr=1e-2", "reg=0"],
        "rounds": 1, "openblas_note": "OpenBLAS: note",
        "settings": [{"epochs": 40, "rounds": rounds, "summary": summarise(rounds, 40)}],
    }  # fmt: skip
    md = render_md(result)
    assert "## 40 epochs per trial" in md
    assert "| dask, 2 workers (1 thread each) | 10.00 | 10.00 | 15.00 (15.00-15.00) |" in md
    assert (
        "| dask 1 worker / 2 workers, sweep_wall_s | 2.00 (2.00-2.00) | 2.00 | >= 1.8 | met |"
    ) in md
    assert "| trial_overhead_s (s), sequential, default threads | 0.05 (0.05-0.05) |" in md
    assert "identical across sequential, dask-1, dask-2: **yes**" in md
    assert (
        "| dask, 2 workers (1 thread each) | 0.080 (0.080-0.080) | 0.020 (0.020-0.020) "
        "| 0.200 (0.200-0.200) | 1.000 (1.000-1.000) | 0.050 (0.050-0.050) |"
    ) in md
    assert md.rstrip().endswith("OpenBLAS: note")


def test_sweep_env_unsets_pins_and_threads(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    env = sweep_env("sqlite:///x.db", None)
    assert "OPENBLAS_CORETYPE" not in env and "OMP_NUM_THREADS" not in env
    assert env["MLFLOW_TRACKING_URI"] == "sqlite:///x.db"
    one = sweep_env("sqlite:///x.db", 1)
    assert (one["OMP_NUM_THREADS"], one["OPENBLAS_NUM_THREADS"]) == ("1", "1")


def test_options():
    assert parse_args([]).epochs == [40, 8]
    quick = parse_args(["--quick"])
    assert (quick.rounds, quick.epochs) == (1, [1])
    assert list(RUNNERS) == ["dask-1", "dask-2", "sequential", "trial-1thread", "trial-default"]
