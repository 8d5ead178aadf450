"""Issue 17's "scheduled runs and notebooks get the same speed": the digits ConvNet's epoch time
on three paths.

    python -m bench.paths [--rounds 3] [--epochs 20] [--paths worker,cli,plain,control]
                          [--quick] [--out bench/results] [--prefect-home DIR]

The paths, each trained with the digits defaults of ``flows/experiments.py`` (seed 0, adam):

- ``worker``: the weekly deployment of ``prefect.yaml`` (``convnet_training/weekly``) run by a
  real ``prefect worker``. Each round starts ``prefect server start`` on a free loopback port
  (its PREFECT_HOME kept across rounds; the work pool ``mlcore-local`` is created and the
  deployment deployed the first time, as docs/deployments.md says), then ``prefect worker
  start -p mlcore-local --type process`` (MLCORE_PROJECT_DIR this checkout, a fresh SQLite
  MLflow store), runs ``mlcore trigger convnet_training/weekly --set epochs=E`` and stops both;
- ``cli``: ``mlcore run convnet --epochs E`` with a fresh SQLite MLflow store (the CLI starts
  its own temporary Prefect server, its PREFECT_HOME kept across rounds);
- ``plain``: ThreeLayerConvNet and Solver imported plainly in a script (``python -c``, what a
  notebook does), on ``load_digits_data(dtype=np.float32)``, timing each epoch with the
  Solver's callback;
- ``control``: the plain script again, in the same round: two runs of one path, whose ratio
  is what this machine's noise alone gives.

An epoch's time is the flows' ``epoch_seconds`` metric (read back from the run's MLflow store
with ``MlflowClient.get_metric_history``): the wall time from one "epoch" event of the Solver's
callback to the next, so the flows' per-epoch logging and checkpoint count in it; the plain
script times the same events. Per round, each path's figure is the median epoch time over
epochs 2..E (the first is warm-up); reported: its median over rounds with min-max, the ratio
of each path to the plain script (median of per-round ratios, min-max), and the done-when of
the issue, each of the three paths within 1.1x of the others: for each pair, the median of the
per-round ratios between 1/1.1 and 1.1. Also reported: the slowest / fastest of the three in
each round, with the same figure for the plain script and its control (a maximum over minimum
of noisy samples exceeds 1 even for one path run twice; the control shows by how much).

Every path runs in fresh processes, the order of the paths reversed every other round (docs
"Measuring against a reference"). No environment variable is set beyond what a user sets
(MLFLOW_TRACKING_URI, PREFECT_HOME, PREFECT_API_URL, the worker's MLCORE_PROJECT_DIR, the
virtual environment's bin first on PATH); OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE (this
machine's pins) are unset for every path, and each path's thread variables are recorded.
``--quick`` is 1 round of 3 epochs (a smoke test). Results go to ``--out``/paths.{json,md}
(default bench/results/, generated: do not edit). 15 rounds of the defaults took about 11
minutes on 2 idle cores.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python bench/paths.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sweep import round_order, spread

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BIN = Path(sys.executable).parent
PATHS = ("worker", "cli", "plain", "control")
COMPARED = ("worker", "cli", "plain")  # the three paths; "control" is the plain again
LABELS = {
    "worker": "weekly deployment, `prefect worker`",
    "cli": "`mlcore run convnet`",
    "plain": "plain script (notebook)",
    "control": "plain script again (control)",
}
DEPLOYMENT = "convnet_training/weekly"
EXPERIMENT = "convnet"  # the MLflow experiment of flows/convnet.py's runs
TARGET = 1.1  # slowest / fastest path, at most
MACHINE_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
THREAD_PREFIXES = ("OMP_", "GOMP_", "KMP_", "OPENBLAS_", "MKL_", "BLIS_", "NUMEXPR_", "VECLIB_")
TIMEOUT = 1800.0  # seconds for any one command

# What a notebook does: the digits split, the course's model and Solver, nothing else.
PLAIN_SCRIPT = """\
import json, os, sys, time

config, solver_config, seed, prefixes = json.loads(sys.argv[1])
threads = {k: v for k, v in sorted(os.environ.items()) if k.startswith(tuple(prefixes))}

import numpy as np
from mlcore.data.images import class_names, load_digits_data
from mlcore.nn import Solver, ThreeLayerConvNet

data = load_digits_data(dtype=np.float32)
model = ThreeLayerConvNet(input_dim=data["X_train"].shape[1:], num_classes=len(class_names(
    "digits")), seed=seed, dtype=np.float32, **config)
epoch_seconds, last = [], [0.0]

def on_event(kind, info):
    if kind == "epoch" and info["epoch"] >= 1:
        now = time.perf_counter()
        epoch_seconds.append(now - last[0])
        last[0] = now

solver = Solver(model, data, **solver_config, seed=seed, callback=on_event, verbose=False)
last[0] = time.perf_counter()
solver.train()
print(json.dumps({"epoch_seconds": epoch_seconds, "best_val_acc": solver.best_val_acc,
                  "threads": threads}))
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bench.paths", description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )  # fmt: skip
    p.add_argument("--rounds", type=int, default=3, help="rounds of each path (default 3)")
    p.add_argument("--epochs", type=int, default=20, help="epochs per run (default 20, at least 2)")
    p.add_argument(
        "--paths", default=",".join(PATHS),
        help=f"comma-separated paths to time (default {','.join(PATHS)})",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="1 round, 3 epochs (smoke test)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for paths.json/.md")
    p.add_argument(
        "--prefect-home", type=Path, default=None,
        help="a PREFECT_HOME whose database the CLI path's Prefect server copies (e.g. one\n"
        "already migrated: its first start then skips the migrations); default: a new one",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.epochs = 1, 3
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.epochs < 2:
        p.error(f"--epochs must be at least 2 (the first epoch is not counted), got {args.epochs}")
    names = [n.strip() for n in args.paths.split(",") if n.strip()]
    unknown = [n for n in names if n not in PATHS]
    if unknown or not names:
        p.error(f"--paths: unknown path {unknown[0] if unknown else '(none)'!r}; "
                f"use some of {', '.join(PATHS)}")  # fmt: skip
    args.paths = [n for n in PATHS if n in names]
    return args


# ---- the environment of each path ----


def user_env(base: dict[str, str], **settings: str) -> dict[str, str]:
    """A path's environment: ``base`` (the user's) without MACHINE_PINS nor any Prefect API
    setting, the virtual environment's bin first on PATH (an activated venv), plus
    ``settings``."""
    env = {k: v for k, v in base.items() if k not in MACHINE_PINS}
    env = {k: v for k, v in env.items() if not k.startswith("PREFECT_API_")}
    env["PATH"] = os.pathsep.join(filter(None, [str(BIN), env.get("PATH")]))
    return {**env, **settings}


def thread_vars(env: dict[str, str]) -> dict[str, str]:
    """The variables of ``env`` that set a thread runtime's behaviour (OpenMP, OpenBLAS, ...)."""
    return {k: env[k] for k in sorted(env) if k.startswith(THREAD_PREFIXES)}


def cli_thread_vars(env: dict[str, str]) -> dict[str, str]:
    """The thread variables an ``mlcore`` process started with ``env`` runs with: ``env``'s,
    plus the defaults its ``main()`` sets where ``env`` does not (flows.cli.process)."""
    from flows.cli.process import ENVIRONMENT_DEFAULTS

    return thread_vars({**ENVIRONMENT_DEFAULTS, **env})


# ---- the three paths ----


def run(cmd: list[str], env: dict, cwd: Path, what: str) -> subprocess.CompletedProcess:
    """``cmd`` to its end; a failure stops the benchmark with its output."""
    done = subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(
            f"{what} failed ({done.returncode}): {' '.join(cmd)}\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def new_store(folder: Path) -> str:
    """A fresh SQLite MLflow store in ``folder`` holding the experiment of the ConvNet runs,
    every artifact in ``folder`` too: the worker's flow runs start in the project checkout,
    where MLflow's default ``./mlruns`` would otherwise collect them. Created by a process
    started in ``folder``, as the artifact root of the store's Default experiment (where
    MLflow 3 puts a logged model's files) is the ``./mlruns`` of the process creating it."""
    folder.mkdir(parents=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    code = (
        "import sys; from mlflow import MlflowClient; "
        "MlflowClient(sys.argv[1]).create_experiment(sys.argv[2], sys.argv[3])"
    )
    cmd = [sys.executable, "-c", code, uri, EXPERIMENT, (folder / "mlruns").as_uri()]
    run(cmd, user_env(os.environ), folder, "creating the MLflow store")
    return uri


def read_back(uri: str, flow_run_id: str | None = None) -> dict:
    """The one ConvNet run of the store ``uri``: its ``epoch_seconds`` (by step) and
    ``best_val_acc``; with ``flow_run_id``, the run must be that Prefect flow run's."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    if len(runs) != 1 or runs[0].info.status != "FINISHED":
        raise SystemExit(f"expected one FINISHED run in {uri}, found "
                         f"{[(r.info.run_id, r.info.status) for r in runs]}")  # fmt: skip
    found = runs[0]
    if flow_run_id is not None and found.data.tags.get("prefect.flow_run_id") != flow_run_id:
        raise SystemExit(f"the run in {uri} is not flow run {flow_run_id}'s")
    history = client.get_metric_history(found.info.run_id, "epoch_seconds")
    return {
        "run_id": found.info.run_id,
        "epoch_seconds": [m.value for m in sorted(history, key=lambda m: m.step)],
        "best_val_acc": found.data.metrics["best_val_acc"],
    }


def run_plain(base: dict, epochs: int, workdir: Path) -> dict:
    from flows.convnet import architecture, solver_settings
    from flows.experiments import CONVNET

    values = CONVNET.resolve({"dataset": "digits", "epochs": epochs})
    spec = [architecture(**values), solver_settings(values), values["seed"], THREAD_PREFIXES]
    started = time.perf_counter()
    done = run([sys.executable, "-c", PLAIN_SCRIPT, json.dumps(spec)], user_env(base), workdir,
               "the plain script")  # fmt: skip
    command_s = time.perf_counter() - started
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "command_s": command_s}


def run_cli(base: dict, epochs: int, workdir: Path, home: Path) -> dict:
    uri = new_store(workdir)
    env = user_env(base, MLFLOW_TRACKING_URI=uri, PREFECT_HOME=str(home))
    started = time.perf_counter()
    run([str(BIN / "mlcore"), "run", "convnet", "--epochs", str(epochs)], env, workdir,
        "mlcore run convnet")  # fmt: skip
    command_s = time.perf_counter() - started
    return {**read_back(uri), "command_s": command_s, "threads": cli_thread_vars(env)}


class WorkerPath:
    """The weekly deployment on a Prefect server of its own, run by a process worker."""

    def __init__(self, base: dict, workdir: Path):
        self.base, self.workdir = base, workdir
        self.home = workdir / "prefect-home-worker"
        self.deployed = False
        # the flow runs start in this checkout: their checkpoints' folder, if they make it
        self.checkpoints = None if (ROOT / "checkpoints").exists() else ROOT / "checkpoints"

    def _start(self, name: str, cmd: list[str], env: dict, url: str = "", health: str = ""):
        from flows.stack import Server, tie

        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return Server(name, url, health, proc, log, tie=tie(proc))

    def run(self, epochs: int, workdir: Path) -> dict:
        from flows.stack import free_port

        port = free_port()
        api = f"http://127.0.0.1:{port}/api"
        server_env = user_env(self.base, PREFECT_HOME=str(self.home))
        server = self._start(
            "prefect-server",
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
             "--analytics-off"],
            server_env, api, f"{api}/health",
        )  # fmt: skip
        worker = None
        try:
            server.wait_healthy(TIMEOUT)
            client_env = user_env(self.base, PREFECT_HOME=str(self.home), PREFECT_API_URL=api)
            if not self.deployed:
                run([str(BIN / "prefect"), "work-pool", "create", "mlcore-local", "--type",
                     "process"], client_env, ROOT, "prefect work-pool create")  # fmt: skip
                run([str(BIN / "prefect"), "--no-prompt", "deploy", "--name", DEPLOYMENT],
                    client_env, ROOT, "prefect deploy")  # fmt: skip
                self.deployed = True
            uri = new_store(workdir)
            worker_env = {**client_env, "MLFLOW_TRACKING_URI": uri, "MLCORE_PROJECT_DIR": str(ROOT)}
            worker = self._start(
                "prefect-worker",
                [str(BIN / "prefect"), "worker", "start", "-p", "mlcore-local", "--type",
                 "process"],
                worker_env,
            )  # fmt: skip
            started = time.perf_counter()
            done = run(
                [str(BIN / "mlcore"), "trigger", DEPLOYMENT, "--set", f"epochs={epochs}",
                 "--timeout", str(int(TIMEOUT))],
                client_env, ROOT, "mlcore trigger",
            )  # fmt: skip
            command_s = time.perf_counter() - started
        finally:
            for process in (worker, server):
                if process is not None:
                    process.stop()
            if self.checkpoints is not None and self.checkpoints.is_dir():
                with contextlib.suppress(OSError):
                    self.checkpoints.rmdir()  # only if empty (each run removes its own)
        flow_run_id = done.stdout.split("flow run ")[1].split()[0]
        return {**read_back(uri, flow_run_id), "command_s": command_s,
                "threads": thread_vars(worker_env)}  # fmt: skip


# ---- pure functions: the figures and the report (tests/bench/test_bench_paths.py) ----


def epoch_figure(epoch_seconds: list[float]) -> float:
    """A run's figure: the median time of its epochs 2.. (the first is warm-up)."""
    if len(epoch_seconds) < 2:
        raise ValueError(f"need at least 2 epochs' times, got {len(epoch_seconds)}")
    return statistics.median(epoch_seconds[1:])


def summarise(rounds: list[dict], paths: list[str]) -> dict:
    """The figures from the rounds (each ``{"runs": {path: result}}``): per path its median
    epoch time over rounds and its ratio to the plain script; for each pair of the compared
    paths (``COMPARED``) the median of per-round ratios, each within TARGET either way for the
    verdict; the slowest / fastest compared path of each round; the same figure for the plain
    script and its control run (two runs of one path: what noise alone gives); whether every
    round's runs reached the same best_val_acc."""
    per_round = [{p: epoch_figure(r["runs"][p]["epoch_seconds"]) for p in paths} for r in rounds]
    figures = {}
    for p in paths:
        figures[p] = {
            "epoch_s": spread(f[p] for f in per_round),
            "to_plain": spread(f[p] / f["plain"] for f in per_round) if "plain" in paths else None,
            "best_val_acc": [r["runs"][p]["best_val_acc"] for r in rounds],
        }
    compared = [p for p in COMPARED if p in paths]
    pairs = {
        f"{a}/{b}": spread(f[a] / f[b] for f in per_round)
        for i, a in enumerate(compared)
        for b in compared[i + 1 :]
    }
    met = bool(pairs) and all(1 / TARGET <= s["median"] <= TARGET for s in pairs.values())
    within = spread(max(f[p] for p in compared) / min(f[p] for p in compared) for f in per_round)
    floor = None
    if {"plain", "control"} <= set(paths):
        floor = spread(
            max(f["plain"], f["control"]) / min(f["plain"], f["control"]) for f in per_round
        )
    same = all(len({r["runs"][p]["best_val_acc"] for p in paths}) == 1 for r in rounds)
    return {"paths": figures, "pairs": pairs, "slowest_to_fastest": within,
            "control_floor": floor, "target": TARGET, "met": met,
            "same_best_val_acc": same}  # fmt: skip


def _spread_text(s: dict | None, digits: int) -> str:
    if s is None:
        return "-"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def render_md(result: dict) -> str:
    """bench/results/paths.md: the paths' table, the verdict, each path's thread variables,
    the machine."""
    s, e = result["summary"], result["epochs"]
    lines = [
        "# `bench/paths.py`: the digits ConvNet's epoch time on three paths (issue 17)",
        "",
        f"Generated by `python -m bench.paths`; do not edit. {e} epochs per run (digits "
        "defaults, adam, seed 0), each path in fresh processes, "
        f"{result['rounds']} round(s) alternating the order. A run's figure: its median epoch "
        f"time over epochs 2-{e} (`epoch_seconds`, the first epoch is warm-up); below, the "
        "median over rounds with min-max, and the ratio to the plain script as the median of "
        "per-round ratios with min-max.",
        "",
        "| path | median epoch s (min-max) | per round | / plain script | best_val_acc |",
        "|---|---|---|---|---|",
    ]
    for p, f in s["paths"].items():
        rounds = ", ".join(f"{v:.3f}" for v in f["epoch_s"]["values"])
        accs = ", ".join(f"{v:.4f}" for v in f["best_val_acc"])
        lines.append(f"| {LABELS[p]} | {_spread_text(f['epoch_s'], 3)} | {rounds} "
                     f"| {_spread_text(f['to_plain'], 2)} | {accs} |")  # fmt: skip
    verdict = "yes" if s["met"] else "**no**"
    same = "yes" if s["same_best_val_acc"] else "no"
    lines += [
        "",
        f"Each path within {s['target']:g}x of the others (per pair, the median of per-round "
        f"ratios, with min-max; within means between 1/{s['target']:g} and {s['target']:g}): "
        f"{verdict}.",
        "",
        "| pair | median ratio (min-max) | per round |",
        "|---|---|---|",
    ]
    for pair, ratio in s["pairs"].items():
        a, b = pair.split("/")
        rounds = ", ".join(f"{v:.2f}" for v in ratio["values"])
        lines.append(f"| {LABELS[a]} / {LABELS[b]} | {_spread_text(ratio, 2)} | {rounds} |")
    floor = s["control_floor"]
    lines += [
        "",
        "Slowest / fastest of the three paths in each round (median with min-max): "
        f"{_spread_text(s['slowest_to_fastest'], 2)}"
        + (
            f"; the same figure for the plain script and its control run, one path run twice "
            f"(what noise alone gives on this machine): {_spread_text(floor, 2)}."
            if floor
            else "."
        ),
        "",
        f"Same best_val_acc on every path in each round: {same}.",
        "",
        "| path | thread variables |",
        "|---|---|",
    ]
    for p, env in result["threads"].items():
        text = ", ".join(f"`{k}={v}`" for k, v in env.items()) or "none"
        lines.append(f"| {LABELS[p]} | {text} |")
    m = result["machine"]
    lines += [
        "",
        f"Machine: {m['cpus']} CPUs, {m['platform']}, {m['processor'] or 'processor unknown'}; "
        f"load average {m['load_before'][0]:.2f} before, {m['load_after'][0]:.2f} after; "
        f"{result['date']}.",
        "",
        result["note"],
        "",
    ]
    return "\n".join(lines)


def note(base: dict) -> str:
    pinned = [f"{k}={base[k]}" for k in MACHINE_PINS if k in base]
    where = f"this machine sets {', '.join(pinned)}" if pinned else "none was set here"
    return (
        f"{' and '.join(MACHINE_PINS)} are unset for every path ({where}): a user's machine has "
        "no such pin. Thread variables: the plain script's and the worker's are those of the "
        "environment they start with (a process worker's flow run inherits the worker's); "
        "`mlcore run`'s add the defaults its `main()` sets (`flows/cli/process.py`)."
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    base = dict(os.environ)  # the user's environment, before anything is imported
    # the new stores' "Creating initial MLflow database tables..." lines are noise here
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    load_before = os.getloadavg()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="mlcore-bench-paths-") as tmp:
        workdir = Path(tmp)
        worker = WorkerPath(base, workdir)
        for r in range(args.rounds):
            runs = {}
            for p in round_order(args.paths, r):
                folder = workdir / f"{p}-{r + 1}"
                if p == "worker":
                    runs[p] = worker.run(args.epochs, folder)
                elif p == "cli":
                    home = workdir / "prefect-home-cli"
                    if args.prefect_home is not None and not home.exists():
                        shutil.copytree(args.prefect_home, home)
                    runs[p] = run_cli(base, args.epochs, folder, home)
                else:
                    folder.mkdir()
                    runs[p] = run_plain(base, args.epochs, folder)
                times = ", ".join(f"{t:.3f}" for t in runs[p]["epoch_seconds"])
                print(f"round {r + 1}/{args.rounds}, {p}: epochs {times} s "
                      f"(whole command {runs[p]['command_s']:.1f} s)", flush=True)  # fmt: skip
            rounds.append({"order": round_order(args.paths, r), "runs": runs})
    result = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor(), "load_before": load_before,
                    "load_after": os.getloadavg()},
        "epochs": args.epochs, "rounds": args.rounds, "quick": args.quick, "paths": args.paths,
        "threads": {p: rounds[0]["runs"][p]["threads"] for p in args.paths},
        "note": note(base), "summary": summarise(rounds, args.paths), "per_round": rounds,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "paths.json").write_text(json.dumps(result, indent=1) + "\n")
    md = render_md(result)
    (args.out / "paths.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
