"""Benchmark ``mlcore sweep`` against issue 20's targets: a ConvNet grid of 8 trials on digits.

    python bench/sweep.py [--rounds 3] [--epochs 40 8] [--quick] [--out bench/results]

The grid: ``mlcore sweep convnet --param lr=1e-3,3e-3,1e-2,3e-2 --param reg=0,1e-3
--set epochs=E --seed 0`` (8 trials), for each ``--epochs`` E (default: 40, then 8). Each round
runs, each in its own ``mlcore sweep`` process with a fresh temporary SQLite MLflow store
(``MLFLOW_TRACKING_URI=sqlite:///TMP/mlflow.db``, cwd TMP), the order reversed every other
round (the house rule, docs "Measuring against a reference"):

- ``dask-1``: the grid on ``--runner dask --workers 1`` (one worker process, one thread);
- ``dask-2``: the grid on ``--runner dask --workers 2`` (two worker processes, one thread each);
- ``sequential``: the grid on ``--runner sequential`` at the machine's default threads;
- ``trial-1thread`` / ``trial-default``: one trial of the grid (lr=1e-2, reg=0) as a 1-trial
  sequential sweep with ``OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=MKL_NUM_THREADS=1`` / unset.

Read back from each sweep's MLflow run: ``sweep_wall_s`` (the trial phase alone, first trial
submitted to last result: not the process start, the temporary Prefect server or the Dask
cluster's start-up) and ``trial_overhead_s`` (the median over trials of submit-to-result time
minus ``Solver.train()``'s wall time); from each trial's child run ``best_val_acc``,
``test_acc``, ``final_train_acc`` and (the 1-trial sweeps) the sum of its ``epoch_seconds``,
its training time. Timed here: each process's whole-command wall time, cluster start included.

Reported per epoch setting, each figure the median over rounds with its min-max:
- dask-1 / dask-2 ``sweep_wall_s``: target >= 1.8 at 40 epochs, >= 1.6 at 8 (no target at other
  epoch counts);
- ``trial_overhead_s`` of sequential and dask-2: target <= 0.2 s;
- no target: sequential / dask-2, one trial's training time 1 thread / default threads (the
  speed-up from its second thread), the whole-command wall times;
- per-trial metrics identical across sequential, dask-1 and dask-2 in every round (yes/no, and
  which trials differ);
- where a grid trial's time goes (``phases``): the sweep's ``sweep/trial_timings.json`` (each
  trial's submit and return times) against its run's start and end.

The thread variables above are unset for every process but ``trial-1thread`` (the Dask
workers get one thread each from mlcore's LocalCluster), and so are ``OPENBLAS_CORETYPE`` and
``OPENBLAS_L2_SIZE``: a user's machine has no such pin. ``--quick`` is 1 round of 1 epoch (a
smoke test, no target applies). Results go to ``--out``/sweep.{json,md} (default
bench/results/, generated: do not edit). The full run (2 x 3 rounds of 5 processes, each
starting its own Prefect server) takes 20-30 minutes on 2 idle cores; ``--quick`` about 5.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
GRID = ["lr=1e-3,3e-3,1e-2,3e-2", "reg=0,1e-3"]  # 8 trials
ONE_TRIAL = ["lr=1e-2", "reg=0"]  # one trial of GRID
EPOCHS = (40, 8)
SPEEDUP_TARGETS = {40: 1.8, 8: 1.6}  # dask-1 / dask-2 sweep_wall_s, at least
OVERHEAD_TARGET = 0.2  # trial_overhead_s, seconds, at most
COMPARED = ("best_val_acc", "test_acc", "final_train_acc")
MACHINE_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# name -> (grid, runner, Dask workers, threads): threads None = the machine's default
RUNNERS = {
    "dask-1": (GRID, "dask", 1, None),
    "dask-2": (GRID, "dask", 2, None),
    "sequential": (GRID, "sequential", None, None),
    "trial-1thread": (ONE_TRIAL, "sequential", None, 1),
    "trial-default": (ONE_TRIAL, "sequential", None, None),
}
LABELS = {
    "dask-1": "dask, 1 worker (1 thread)",
    "dask-2": "dask, 2 workers (1 thread each)",
    "sequential": "sequential, default threads",
    "trial-1thread": "one trial, 1 thread",
    "trial-default": "one trial, default threads",
}
GRID_RUNNERS = ("sequential", "dask-1", "dask-2")  # whose trials must agree
TIMINGS = "sweep/trial_timings.json"  # the sweep run's per-trial submit and return times
PHASES = {
    "engine": "submitted -> trial code",
    "start": "trial code -> run start",
    "run": "run, outside training",
    "train": "training",
    "return": "run end -> result",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of each runner (default 3)")
    p.add_argument(
        "--epochs", type=int, nargs="+", default=list(EPOCHS),
        help="epochs per trial, one setting each (default: 40 8)",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="1 round, 1 epoch (smoke test)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for sweep.json/.md")
    args = p.parse_args(argv)
    if args.rounds < 1 or min(args.epochs) < 1:
        p.error("--rounds and --epochs must be at least 1")
    if args.quick:
        args.rounds, args.epochs = 1, [1]
    return args


def sweep_env(uri: str, threads: int | None) -> dict[str, str]:
    """A sweep process's environment: this one's without MACHINE_PINS and THREAD_VARS, with
    the MLflow store ``uri`` and, if ``threads``, every THREAD_VARS set to it."""
    env = {k: v for k, v in os.environ.items() if k not in MACHINE_PINS + THREAD_VARS}
    env["MLFLOW_TRACKING_URI"] = uri
    if threads is not None:
        env.update({v: str(threads) for v in THREAD_VARS})
    return env


def one_sweep(name: str, epochs: int, workdir: Path) -> dict:
    """Run the sweep of runner ``name`` in its own process, its MLflow store in ``workdir``;
    return its whole-command wall time, the sweep run's figures and each trial's metrics."""
    from mlflow import MlflowClient

    grid, runner, workers, threads = RUNNERS[name]
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    cmd = [str(Path(sys.executable).parent / "mlcore"), "sweep", "convnet",
           *[a for spec in grid for a in ("--param", spec)], "--set", f"epochs={epochs}",
           "--seed", "0", "--runner", runner]  # fmt: skip
    if workers is not None:
        cmd += ["--workers", str(workers)]
    started = time.perf_counter()
    out = subprocess.run(
        cmd, env=sweep_env(uri, threads), cwd=workdir, capture_output=True, text=True
    )
    command_s = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"{name} sweep failed ({' '.join(cmd)}):\n{out.stdout}\n{out.stderr}")
    run_id = out.stdout.strip().splitlines()[-1].split()[-1]
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
    )
    timings = json.loads(Path(client.download_artifacts(run_id, TIMINGS, str(workdir))).read_text())
    timings = {t["trial"]: t for t in timings}
    trials = {}
    for child in children:
        history = client.get_metric_history(child.info.run_id, "epoch_seconds")
        number = int(child.data.tags["mlcore.trial"])
        trials[number] = {
            "params": {k: child.data.params[k] for k in ("lr", "reg")},
            "metrics": {k: child.data.metrics.get(k) for k in COMPARED},
            "train_s": sum(m.value for m in history),
            "phases": phases(timings[number], child.info.start_time, child.info.end_time),
        }
    metrics = run.data.metrics
    return {
        "run_id": run_id, "command_s": command_s, "sweep_wall_s": metrics["sweep_wall_s"],
        "trial_overhead_s": metrics.get("trial_overhead_s"),
        "trials": {n: trials[n] for n in sorted(trials)},
    }  # fmt: skip


# ---- pure functions: the figures and the report (tests/bench/test_bench_sweep.py) ----


def phases(timing: dict, run_start_ms: int, run_end_ms: int | None) -> dict | None:
    """Where one trial's time went, in seconds, from the sweep's ``sweep/trial_timings.json``
    entry (submitted, returned: the driver's Unix times; started: when the trial's task code
    began on its worker; ``train_s``: Solver.train()'s wall time) and its MLflow run's start
    and end (ms): ``engine`` submitted to the task code (Dask, the worker's Prefect task
    engine), ``start`` task code to run start (the run's creation), ``run`` the run's life
    outside ``Solver.train()`` (parameters, data, model, the flow's nested tasks, the run's
    end), ``train``, and ``return`` run end to result (the task's end, the result's way back).
    None when the run ended after the result came back (the best trial, reopened at the
    sweep's end to add its model)."""
    if run_end_ms is None or timing["train_s"] is None:
        return None
    start, end = run_start_ms / 1000, run_end_ms / 1000
    if end > timing["returned"]:
        return None
    return {
        "engine": timing["started"] - timing["submitted"], "start": start - timing["started"],
        "run": end - start - timing["train_s"], "train": timing["train_s"],
        "return": timing["returned"] - end,
    }  # fmt: skip


def phase_medians(trials: dict) -> dict | None:
    """The median of each phase over a sweep's trials (those with phases)."""
    known = [t["phases"] for t in trials.values() if t.get("phases")]
    if not known:
        return None
    return {k: statistics.median(p[k] for p in known) for k in PHASES}


def round_order(names, r: int) -> list[str]:
    """The runners of round ``r`` (0-based): in order, reversed every other round."""
    return list(names) if r % 2 == 0 else list(names)[::-1]


def spread(values) -> dict | None:
    """Median with min-max and the values themselves; None if any value is missing."""
    values = list(values)
    if not values or any(v is None for v in values):
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}  # fmt: skip


def verdict(value: float | None, target: float | None, at_least: bool) -> str:
    """The verdict on ``value``: met, NOT met, no target, or missing (no value)."""
    if target is None:
        return "no target"
    if value is None:
        return "missing"
    return "met" if (value >= target if at_least else value <= target) else "NOT met"


def differing_trials(runs: dict[str, dict]) -> list[dict]:
    """The trials whose COMPARED metrics are not the same bits under every runner of ``runs``
    (runner name -> ``one_sweep``'s result), or that some runner lacks; each with its values
    per runner."""
    numbers = sorted({n for run in runs.values() for n in run["trials"]})
    found = []
    for n in numbers:
        per_runner = {name: run["trials"].get(n) for name, run in runs.items()}
        values = {name: t and t["metrics"] for name, t in per_runner.items()}
        distinct = {json.dumps(v, sort_keys=True) for v in values.values()}
        if None in values.values() or len(distinct) > 1:
            params = next(t["params"] for t in per_runner.values() if t is not None)
            found.append({"trial": n, "params": params, "metrics": values})
    return found


def summarise(rounds: list[dict], epochs: int) -> dict:
    """The figures of one epoch setting from its rounds (each ``{"runs": {name: result}}``)."""

    def of(name, key):
        return spread(r["runs"][name][key] for r in rounds)

    def ratio(a, b, key="sweep_wall_s"):
        return spread(r["runs"][a][key] / r["runs"][b][key] for r in rounds)

    def train_s(r, name):
        return next(iter(r["runs"][name]["trials"].values()))["train_s"]

    target = SPEEDUP_TARGETS.get(epochs)
    speedup = ratio("dask-1", "dask-2")
    overheads = {name: of(name, "trial_overhead_s") for name in GRID_RUNNERS}
    differ = [
        {"round": i + 1, **t}
        for i, r in enumerate(rounds)
        for t in differing_trials({n: r["runs"][n] for n in GRID_RUNNERS})
    ]
    figures = [
        {"figure": "dask 1 worker / 2 workers, sweep_wall_s", "spread": speedup,
         "target": target, "at_least": True},
        {"figure": "sequential / dask 2 workers, sweep_wall_s",
         "spread": ratio("sequential", "dask-2"), "target": None, "at_least": True},
        *[{"figure": f"trial_overhead_s (s), {LABELS[name]}", "spread": overheads[name],
           "target": None if name == "dask-1" else OVERHEAD_TARGET, "at_least": False}
          for name in GRID_RUNNERS],
        {"figure": "one trial's training time, 1 thread / default threads",
         "spread": spread(train_s(r, "trial-1thread") / train_s(r, "trial-default")
                          for r in rounds),
         "target": None, "at_least": True},
    ]  # fmt: skip
    for f in figures:
        value = f["spread"] and f["spread"]["median"]
        f["verdict"] = verdict(value, f["target"], f["at_least"])
    return {
        "runners": {
            name: {"sweep_wall_s": of(name, "sweep_wall_s"), "command_s": of(name, "command_s"),
                   "trial_overhead_s": overheads.get(name) or of(name, "trial_overhead_s"),
                   "train_s": spread(train_s(r, name) for r in rounds)
                   if name.startswith("trial-") else None}
            for name in RUNNERS
        },
        "phases": {
            name: {k: spread((phase_medians(r["runs"][name]["trials"]) or {}).get(k)
                             for r in rounds) for k in PHASES}
            for name in GRID_RUNNERS
        },
        "figures": figures, "identical": not differ, "differing": differ,
    }  # fmt: skip


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _spread_text(s: dict | None, digits: int = 2) -> str:
    if s is None:
        return "-"
    return f"{_num(s['median'], digits)} ({_num(s['min'], digits)}-{_num(s['max'], digits)})"


def _per_round(s: dict | None, digits: int = 2) -> str:
    return "-" if s is None else ", ".join(_num(v, digits) for v in s["values"])


def render_md(result: dict) -> str:
    """bench/results/sweep.md: per epoch setting, the runners' table, the figures against
    their targets and whether the trials agree; then the machine, date and the OpenBLAS note."""
    lines = [
        "# `bench/sweep.py`: `mlcore sweep convnet` on digits, issue 20's targets",
        "",
        "Generated by `python bench/sweep.py`; do not edit. Grid: `mlcore sweep convnet "
        + " ".join(f"--param {g}" for g in result["grid"])
        + " --set epochs=E --seed 0` (8 trials), SQLite MLflow store, each sweep its own "
        f"process, {result['rounds']} round(s) alternating the order; medians over rounds with "
        "min-max. One trial: " + ", ".join(result["one_trial"]) + ".",
    ]
    for setting in result["settings"]:
        s, e = setting["summary"], setting["epochs"]
        lines += [
            "", f"## {e} epoch{'s' if e != 1 else ''} per trial", "",
            "| runner | median sweep_wall_s | per round | whole command (s) | "
            "trial_overhead_s | training (s) |",
            "|---|---|---|---|---|---|",
        ]  # fmt: skip
        for name, r in s["runners"].items():
            lines.append(
                f"| {LABELS[name]} | {_num(r['sweep_wall_s'] and r['sweep_wall_s']['median'])} "
                f"| {_per_round(r['sweep_wall_s'])} | {_spread_text(r['command_s'])} "
                f"| {_spread_text(r['trial_overhead_s'], 3)} | {_spread_text(r['train_s'])} |"
            )
        lines += [
            "", "Where a grid trial's time goes, in seconds (per sweep the median over its "
            "trials, from the driver's submit and return times and the trial run's start and "
            "end; then the median over rounds with min-max):", "",
            "| runner | " + " | ".join(PHASES.values()) + " |",
            "|---|" + "---|" * len(PHASES),
        ]  # fmt: skip
        for name, ph in s.get("phases", {}).items():
            cells = " | ".join(_spread_text(ph[k], 3) for k in PHASES)
            lines.append(f"| {LABELS[name]} | {cells} |")
        lines += [
            "",
            "| figure | median (min-max) | per round | target | |",
            "|---|---|---|---|---|",
        ]
        for f in s["figures"]:
            target = (
                "-" if f["target"] is None
                else f"{'>=' if f['at_least'] else '<='} {f['target']:g}"
            )  # fmt: skip
            lines.append(
                f"| {f['figure']} | {_spread_text(f['spread'])} | {_per_round(f['spread'])} "
                f"| {target} | {f['verdict']} |"
            )
        same = "yes" if s["identical"] else "no"
        lines += ["", f"Per-trial metrics ({', '.join(COMPARED)}) identical across "
                  f"{', '.join(GRID_RUNNERS)}: **{same}**"]  # fmt: skip
        for d in s["differing"]:
            params = " ".join(f"{k}={v}" for k, v in d["params"].items())
            values = "; ".join(
                f"{name} " + ("missing" if m is None else
                              ", ".join(f"{k} {_num(v, 4)}" for k, v in m.items()))
                for name, m in d["metrics"].items()
            )  # fmt: skip
            lines.append(f"- round {d['round']}, trial {d['trial']} ({params}): {values}")
    m = result["machine"]
    lines += [
        "",
        f"Machine: {m['cpus']} CPUs, {m['platform']}, {m['processor'] or 'processor unknown'}; "
        f"{result['date']}.",
        "",
        result["openblas_note"],
        "",
    ]
    return "\n".join(lines)


def openblas_note() -> str:
    pinned = [f"{k}={os.environ[k]}" for k in MACHINE_PINS if k in os.environ]
    where = f"this machine sets {', '.join(pinned)}" if pinned else "none was set here"
    return (
        f"OpenBLAS: {' and '.join(MACHINE_PINS)} are unset in every sweep process ({where}): "
        "a user's machine has no such pin. OMP/OPENBLAS/MKL_NUM_THREADS are unset too, except "
        "1 for the one-trial 1-thread sweep; each Dask worker runs one thread (mlcore's "
        "LocalCluster)."
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    # no progress bar in the report for each timings file read back (the CLI's default too)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    settings = []
    for epochs in args.epochs:
        rounds = []
        for r in range(args.rounds):
            runs = {}
            for name in round_order(RUNNERS, r):
                with tempfile.TemporaryDirectory(prefix="mlcore-bench-sweep-") as tmp:
                    runs[name] = one_sweep(name, epochs, Path(tmp))
                print(f"{epochs} epochs, round {r + 1}, {name}: sweep_wall_s "
                      f"{runs[name]['sweep_wall_s']:.2f}, whole command "
                      f"{runs[name]['command_s']:.2f} s", flush=True)  # fmt: skip
            rounds.append({"order": round_order(RUNNERS, r), "runs": runs})
        settings.append({"epochs": epochs, "rounds": rounds, "summary": summarise(rounds, epochs)})
    result = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor()},
        "grid": GRID, "one_trial": ONE_TRIAL, "rounds": args.rounds, "quick": args.quick,
        "openblas_note": openblas_note(), "settings": settings,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(result, indent=1))
    md = render_md(result)
    (args.out / "sweep.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
