"""``bench/paths.py``: its figures and report from made-up runs, and a real ``--quick`` run of
the plain script and ``mlcore run convnet``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.paths import (
    MACHINE_PINS,
    PATHS,
    cli_thread_vars,
    epoch_figure,
    parse_args,
    render_md,
    summarise,
    thread_vars,
    user_env,
)
from flows.cli.process import ENVIRONMENT_DEFAULTS as CLI_DEFAULTS
from tests.conftest import prefect_home

ROOT = Path(__file__).resolve().parents[2]


def runs(worker, cli, plain, acc=(0.96, 0.96, 0.96), control=None):
    """One round: each path's epoch times, a slow first epoch (warm-up) then the figure."""
    times = {"worker": worker, "cli": cli, "plain": plain}
    accs = list(acc)
    if control is not None:
        times["control"] = control
        accs.append(acc[2])
    return {
        "runs": {
            p: {"epoch_seconds": [9.0, t, t], "best_val_acc": a}
            for (p, t), a in zip(times.items(), accs, strict=True)
        }
    }


def test_options():
    args = parse_args([])
    assert (args.rounds, args.epochs) == (3, 20)
    assert args.paths == ["worker", "cli", "plain", "control"]
    quick = parse_args(["--quick", "--paths", "plain,cli"])
    assert (quick.rounds, quick.epochs, quick.paths) == (1, 3, ["cli", "plain"])
    for bad in (["--paths", "plain,nope"], ["--epochs", "1"], ["--rounds", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    assert PATHS == ("worker", "cli", "plain", "control")


def test_a_runs_figure_skips_the_first_epoch():
    assert epoch_figure([5.0, 1.0, 3.0, 2.0]) == 2.0
    assert epoch_figure([5.0, 1.0]) == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        epoch_figure([5.0])


def test_summary_ratios_to_plain_and_the_target():
    rounds = [runs(1.05, 1.0, 1.0), runs(1.3, 1.1, 1.0), runs(1.0, 1.0, 0.95)]
    s = summarise(rounds, ["worker", "cli", "plain"])
    worker = s["paths"]["worker"]
    assert worker["epoch_s"]["values"] == [1.05, 1.3, 1.0]
    assert worker["epoch_s"]["median"] == 1.05
    assert worker["to_plain"]["values"] == pytest.approx([1.05, 1.3, 1.0 / 0.95])
    assert worker["to_plain"]["median"] == pytest.approx(1.0 / 0.95)
    assert s["paths"]["plain"]["to_plain"]["median"] == 1.0
    assert s["slowest_to_fastest"]["values"] == pytest.approx([1.05, 1.3, 1.0 / 0.95])
    # the verdict: each pair's median of per-round ratios within 1.1 either way
    assert list(s["pairs"]) == ["worker/cli", "worker/plain", "cli/plain"]
    assert s["pairs"]["worker/cli"]["values"] == pytest.approx([1.05, 1.3 / 1.1, 1.0])
    assert s["pairs"]["worker/cli"]["median"] == pytest.approx(1.05)
    assert s["pairs"]["cli/plain"]["median"] == pytest.approx(1.0 / 0.95)
    assert s["met"] is True  # medians 1.05, 1.053, 1.053
    assert s["control_floor"] is None  # no control run
    slow = summarise([runs(1.2, 1.0, 1.0)], ["worker", "cli", "plain"])
    assert slow["slowest_to_fastest"]["median"] == pytest.approx(1.2)
    assert slow["met"] is False
    fast = summarise([runs(1.0, 1.0, 1.2)], ["worker", "cli", "plain"])  # faster counts too
    assert fast["pairs"]["worker/plain"]["median"] == pytest.approx(1 / 1.2)
    assert fast["met"] is False
    assert s["same_best_val_acc"] is True
    # the control (the plain script again) gives the noise floor, and is not one of the pairs
    noisy = summarise([runs(1.0, 1.0, 1.0, control=1.25), runs(1.0, 1.0, 1.0, control=0.9)],
                      list(PATHS))  # fmt: skip
    assert noisy["control_floor"]["values"] == pytest.approx([1.25, 1 / 0.9])
    assert list(noisy["pairs"]) == ["worker/cli", "worker/plain", "cli/plain"]
    assert noisy["paths"]["control"]["to_plain"]["values"] == pytest.approx([1.25, 0.9])
    assert noisy["met"] is True
    differ = summarise([runs(1, 1, 1, acc=(0.96, 0.95, 0.96))], ["worker", "cli", "plain"])
    assert differ["same_best_val_acc"] is False
    # without the plain script, no ratio to it
    assert summarise(rounds, ["worker", "cli"])["paths"]["cli"]["to_plain"] is None
    assert summarise([runs(1, 1, 1, control=1)], ["plain", "control"])["met"] is False  # no pair


def test_report():
    rounds = [runs(1.3, 1.1, 1.0, control=1.1)]
    result = {
        "date": "2026-11-30T20:00:00+00:00", "epochs": 6, "rounds": 1,
        "machine": {"cpus": 2, "platform": "Linux", "processor": "x86_64",
                    "load_before": [0.5, 0.5, 0.5], "load_after": [1.0, 1.0, 1.0]},
        "threads": {"worker": {}, "cli": {"OMP_WAIT_POLICY": "passive"}, "plain": {},
                    "control": {}},
        "note": "OpenBLAS note", "summary": summarise(rounds, list(PATHS)),
    }  # fmt: skip
    md = render_md(result)
    assert "| weekly deployment, `prefect worker` | 1.300 (1.300-1.300) | 1.300 | 1.30" in md
    assert "| plain script (notebook) | 1.000 (1.000-1.000) | 1.000 | 1.00 (1.00-1.00) |" in md
    assert "Each path within 1.1x of the others" in md and "and 1.1): **no**." in md
    worker_to_plain = "| weekly deployment, `prefect worker` / plain script (notebook) | 1.30 ("
    assert worker_to_plain in md
    assert "| `mlcore run convnet` / plain script (notebook) | 1.10 (1.10-1.10) | 1.10 |" in md
    assert "of the three paths in each round (median with min-max): 1.30 (1.30-1.30); " in md
    assert "its control run, one path run twice" in md
    assert "on this machine): 1.10 (1.10-1.10)." in md
    assert "| plain script again (control) | 1.100 (1.100-1.100) | 1.100 | 1.10" in md
    assert "| `mlcore run convnet` | `OMP_WAIT_POLICY=passive` |" in md
    assert "| plain script (notebook) | none |" in md
    assert md.rstrip().endswith("OpenBLAS note")


def test_environments(monkeypatch):
    base = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1", "OMP_NUM_THREADS": "2",
            "PREFECT_API_URL": "http://x/api", "PATH": "/usr/bin", "HOME": "/h"}  # fmt: skip
    env = user_env(base, PREFECT_HOME="/p")
    assert "OPENBLAS_CORETYPE" not in env and "OPENBLAS_L2_SIZE" not in env
    assert "PREFECT_API_URL" not in env  # the user's server is not the benchmark's
    assert env["PATH"].endswith(":/usr/bin") and (env["HOME"], env["PREFECT_HOME"]) == ("/h", "/p")
    assert thread_vars(env) == {"OMP_NUM_THREADS": "2"}
    # an mlcore process adds the CLI's thread defaults where the environment has none (the
    # ones its main() sets today, and any it may set)
    monkeypatch.setitem(CLI_DEFAULTS, "OMP_WAIT_POLICY", "passive")
    assert cli_thread_vars(env) == thread_vars({**CLI_DEFAULTS, **env})
    assert cli_thread_vars(env)["OMP_WAIT_POLICY"] == "passive"
    assert cli_thread_vars({**env, "OMP_WAIT_POLICY": "active"})["OMP_WAIT_POLICY"] == "active"
    assert cli_thread_vars(env)["OMP_NUM_THREADS"] == "2"


@pytest.mark.slow
def test_quick_run_of_the_plain_script_and_the_cli(tmp_path):
    # a user's environment: a machine pin (unset for every path), a thread variable of the
    # user's (kept and recorded), none of the CLI's settings
    env = {k: v for k, v in os.environ.items() if k not in CLI_DEFAULTS}
    env |= {"OPENBLAS_CORETYPE": "Haswell", "OMP_DISPLAY_ENV": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.paths", "--quick", "--paths", "plain,cli",
         "--out", str(tmp_path), "--prefect-home", str(prefect_home(tmp_path / "ph"))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "paths.json").read_text())
    assert (result["rounds"], result["epochs"], result["paths"]) == (1, 3, ["cli", "plain"])
    (only,) = result["per_round"]
    for p in ("cli", "plain"):
        times = only["runs"][p]["epoch_seconds"]
        assert len(times) == 3 and all(t > 0 for t in times), (p, times)
        figure = result["summary"]["paths"][p]
        assert figure["epoch_s"]["median"] == pytest.approx((times[1] + times[2]) / 2)
        ratio = figure["to_plain"]
        assert ratio["min"] <= ratio["median"] <= ratio["max"]
    assert result["summary"]["paths"]["plain"]["to_plain"]["median"] == 1.0
    cli, plain = (result["summary"]["paths"][p]["epoch_s"]["median"] for p in ("cli", "plain"))
    assert result["summary"]["paths"]["cli"]["to_plain"]["median"] == pytest.approx(cli / plain)
    within = result["summary"]["slowest_to_fastest"]["median"]
    assert within == pytest.approx(max(cli, plain) / min(cli, plain))
    assert result["summary"]["pairs"]["cli/plain"]["median"] == pytest.approx(cli / plain)
    assert result["summary"]["met"] is (1 / 1.1 <= cli / plain <= 1.1)
    # the same training on both paths
    assert result["summary"]["same_best_val_acc"] is True
    # the plain script's as it read them: the user's, without the pin; the CLI's with its own
    given = thread_vars({k: v for k, v in env.items() if k not in MACHINE_PINS})
    assert given["OMP_DISPLAY_ENV"] == "false"
    assert result["threads"]["plain"] == given
    assert result["threads"]["cli"] == thread_vars({**CLI_DEFAULTS, **given})
    md = (tmp_path / "paths.md").read_text()
    assert "| `mlcore run convnet` |" in md and "| plain script (notebook) |" in md
