"""Benchmark ``mlcore sweep``: a ConvNet grid of 8 trials on digits, sequential vs Dask workers.

    python bench/sweep.py [--rounds 3] [--workers 2] [--epochs 4] [--quick]

Each sweep is its own ``mlcore sweep`` process (a fresh MLflow store per round, so every
round does the same work), the two runners alternating round by round. The figure is
``sweep_wall_s`` read back from each sweep's MLflow run: the trial phase alone, from the first
trial submitted to the last result (not the process start, the temporary Prefect server or
the Dask cluster's start-up). Reported: the median per-round ratio sequential / dask with its
min-max. Results go to bench/results/sweep.{json,md}.

The sequential sweep runs with the machine's default thread settings (numpy's BLAS may use
every core); each Dask worker process gets one BLAS/OpenMP thread (mlcore's LocalCluster).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
GRID = ["hidden_dim=32,64", "lr=1e-3,3e-3", "reg=0,1e-3"]  # 8 trials


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of each runner (default 3)")
    p.add_argument("--workers", type=int, default=2, help="Dask worker processes (default 2)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per trial (default 4)")
    p.add_argument("--quick", action="store_true", help="1 round, 1 epoch (smoke test)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for sweep.json/.md")
    return p.parse_args(argv)


def one_sweep(runner: str, workers: int, epochs: int, workdir: Path) -> dict:
    """Run one sweep in its own process; return its sweep_wall_s and trial count."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    cmd = [str(Path(sys.executable).parent / "mlcore"), "sweep", "convnet",
           *[a for spec in GRID for a in ("--param", spec)], "--set", f"epochs={epochs}",
           "--seed", "0", "--runner", runner]  # fmt: skip
    if runner == "dask":
        cmd += ["--workers", str(workers)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    out = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{runner} sweep failed:\n{out.stdout}\n{out.stderr}")
    run_id = out.stdout.strip().splitlines()[-1].split()[-1]
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    return {"sweep_wall_s": run.data.metrics["sweep_wall_s"], "run_id": run_id}


def main(argv=None) -> None:
    args = parse_args(argv)
    rounds, epochs = (1, 1) if args.quick else (args.rounds, args.epochs)
    samples: dict[str, list[float]] = {"sequential": [], "dask": []}
    ratios = []
    for r in range(rounds):
        order = ["sequential", "dask"] if r % 2 == 0 else ["dask", "sequential"]
        got = {}
        for runner in order:
            with tempfile.TemporaryDirectory(prefix="mlcore-bench-sweep-") as tmp:
                got[runner] = one_sweep(runner, args.workers, epochs, Path(tmp))["sweep_wall_s"]
            samples[runner].append(got[runner])
        ratios.append(got["sequential"] / got["dask"])
        print(f"round {r + 1}: sequential {got['sequential']:.2f} s, dask {got['dask']:.2f} s, "
              f"ratio {ratios[-1]:.2f}", flush=True)  # fmt: skip
    result = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor()},  # fmt: skip
        "grid": GRID, "epochs": epochs, "workers": args.workers, "rounds": rounds,
        "sequential_s": samples["sequential"], "dask_s": samples["dask"],
        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
        "ratio_max": max(ratios), "target": 1.7,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(result, indent=1))
    md = (
        "| runner | median sweep_wall_s | per round |\n|---|---|---|\n"
        f"| sequential | {statistics.median(samples['sequential']):.2f} | "
        f"{', '.join(f'{s:.2f}' for s in samples['sequential'])} |\n"
        f"| dask, {args.workers} workers | {statistics.median(samples['dask']):.2f} | "
        f"{', '.join(f'{s:.2f}' for s in samples['dask'])} |\n\n"
        f"sequential / dask: **{result['ratio_median']:.2f}** "
        f"({result['ratio_min']:.2f}-{result['ratio_max']:.2f}), target >= 1.7; "
        f"8 trials, {epochs} epochs each, {os.cpu_count()} CPUs, {result['date']}\n"
    )
    (args.out / "sweep.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
