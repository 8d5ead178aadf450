"""The cost of the flow around the maths: `mlcore run housing` against a trivial Prefect flow
that logs one MLflow run, each a fresh process (what a user or a scheduled run pays).

    python bench/flow.py [--rounds 7] [--out bench/results]

Each engine runs in its own process, in its own working directory (its own ./mlflow.db and
PREFECT_HOME, kept across rounds as a user's would be), rounds alternating which engine goes
first. One warm-up round each is not counted (it creates the databases). Reported: the median
wall time of each, and the median of per-round ratios housing/trivial with min-max. Written to
bench/results/flow.json and flow.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BIN = Path(sys.executable).parent

TRIVIAL = """
import mlflow
from prefect import flow


@flow(name="trivial")
def trivial() -> str:
    mlflow.set_experiment("trivial")
    with mlflow.start_run() as run:
        mlflow.log_param("x", 1)
        mlflow.log_metric("y", 1.0)
    return run.info.run_id


if __name__ == "__main__":
    print(trivial())
"""


def engines(workdir: Path) -> dict[str, list[str]]:
    script = workdir / "trivial_flow.py"
    script.write_text(TRIVIAL)
    return {
        "housing": [str(BIN / "mlcore"), "run", "housing"],
        "trivial": [sys.executable, str(script)],
    }


def run_once(name: str, cmd: list[str], workdir: Path) -> float:
    home = workdir / name
    home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(home / "prefect"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "MLCORE_DATA_DIR": str(workdir / "raw"),
        # as the CLI and the Makefile set them: no telemetry, time for the temporary server
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=home, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return elapsed


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for flow.json/.md")
    args = p.parse_args(argv)
    if not os.environ.get("MLCORE_DATA_MIRROR") and (ROOT.parent / "shared" / "data").is_dir():
        os.environ["MLCORE_DATA_MIRROR"] = str((ROOT.parent / "shared" / "data").resolve())

    with tempfile.TemporaryDirectory(prefix="mlcore-bench-flow-") as tmp:
        workdir = Path(tmp)
        cmds = engines(workdir)
        for name, cmd in cmds.items():  # warm-up: databases, caches
            run_once(name, cmd, workdir)
        times: dict[str, list[float]] = {name: [] for name in cmds}
        ratios = []
        for r in range(args.rounds):
            order = list(cmds) if r % 2 == 0 else list(reversed(cmds))
            sample = {name: run_once(name, cmds[name], workdir) for name in order}
            for name, t in sample.items():
                times[name].append(t)
            ratios.append(sample["housing"] / sample["trivial"])
            print(
                f"round {r + 1}/{args.rounds}: housing {sample['housing']:.2f} s, "
                f"trivial {sample['trivial']:.2f} s, ratio {ratios[-1]:.3f}",
                flush=True,
            )

    result = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "rounds": args.rounds,
        "load_average": os.getloadavg(),
        "median_s": {name: statistics.median(t) for name, t in times.items()},
        "times_s": times,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flow.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (
        "| what | median wall s |\n|---|---|\n"
        f"| `mlcore run housing` | {result['median_s']['housing']:.2f} |\n"
        f"| trivial flow logging one MLflow run | {result['median_s']['trivial']:.2f} |\n"
        f"| **housing / trivial** (median of per-round ratios, min-max) | "
        f"**{result['ratio_median']:.2f}** "
        f"({result['ratio_min']:.2f}-{result['ratio_max']:.2f}) |\n"
    )
    (args.out / "flow.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
