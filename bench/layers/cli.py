"""The command line and the parent process: it starts one worker per engine, runs every case's
rounds, and writes the results; with ``--worker``, ``--memory-child`` or ``--profile-child``
this process is one of the processes the parent starts."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import bench.layers
from bench.layers.cases import case_list
from bench.layers.memory import measure_memory, memory_child
from bench.layers.processes import MACHINE_PINS, RESULTS, ROOT, mlcore_settings
from bench.layers.profile import profile_step, run_profile
from bench.layers.report import (
    fmt_ms,
    machine_info,
    memory_note,
    method_notes,
    openblas_kernel,
    print_table,
    summarize,
    table_rows,
    write_profile,
    write_results,
)
from bench.layers.worker import (
    WORKER_KINDS,
    Worker,
    idle_wait_summary,
    idle_wait_warning,
    run_case,
    run_worker,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bench.layers",
        description=bench.layers.__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--threads", type=int, default=2, help="threads per engine (default 2)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 25, quick 3)")
    p.add_argument("--quick", action="store_true", help="few rounds and short samples (smoke test)")
    p.add_argument("--no-naive", action="store_true", help="skip the naive layers")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    p.add_argument(
        "--no-plain", action="store_true", help="skip the worker of mlcore imported plainly"
    )
    p.add_argument("--memory", action="store_true", help="also measure an epoch's peak memory")
    p.add_argument("--profile", action="store_true", help="also profile the mlcore step")
    p.add_argument("--only", default=None, help="only the cases whose name contains this")
    p.add_argument(
        "--sample-ms",
        type=float,
        default=None,
        help="length of one timed sample, back-to-back calls (default 100 ms, quick 8 ms)",
    )
    p.add_argument("--worker", choices=WORKER_KINDS, help=argparse.SUPPRESS)
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory-steps", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--profile-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--profile-reps", type=int, default=40, help=argparse.SUPPRESS)
    p.add_argument(
        "--mlcore-path",
        type=Path,
        default=None,
        help="import mlcore from this directory in the mlcore and naive workers\n"
        "(another checkout with its extension built in place: a before/after comparison)",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for the results")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    if args.memory_child:
        mlcore_settings(args.threads)
        sys.path.insert(0, str(ROOT))
        memory_child(args.memory_steps)
        return 0
    if args.profile_child:
        mlcore_settings(args.threads)
        sys.path.insert(0, str(ROOT))
        print(json.dumps(profile_step(args.profile_reps, cpu=args.threads == 1)))
        return 0
    return run_benchmark(args)


def run_benchmark(args) -> int:
    """The parent: one worker per engine, every case's rounds, then the results to
    ``args.out``."""
    rounds = args.rounds or (3 if args.quick else 25)
    target = (args.sample_ms or (8.0 if args.quick else 100.0)) / 1e3
    naive_rounds = 1 if args.quick else 3
    gap = 0.005 if args.quick else 0.02
    notes = []

    kinds = ["mlcore"] + ([] if args.no_plain else ["plain"])
    if not args.no_torch:
        try:
            import importlib.util

            if importlib.util.find_spec("torch") is None:
                raise ImportError
            kinds.append("torch")
        except ImportError:
            notes.append("PyTorch is not installed: the torch column is skipped.")
    if not args.no_naive:
        kinds.append("naive")

    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    workers = []
    rows = []
    idle_waits: dict[str, list[float]] = {}
    try:
        for kind in kinds:
            workers.append(Worker(kind, args))
        info = machine_info(args.threads)
        # what this environment pins and no worker inherits (None: not set here either)
        info["machine_pins_unset_in_workers"] = {v: os.environ.get(v) for v in MACHINE_PINS}
        info["workers"] = {w.kind: w.ask(cmd="info") for w in workers}
        info["openblas_kernel"] = openblas_kernel(info["workers"])
        if not info["workers"]["mlcore"].get("mlcore_extension_active"):
            notes.append("the Cython extension is not active: 'fast' is the numpy fallback.")
        for name, group, kind in case_list():
            if args.only and args.only not in name:
                continue
            samples = run_case(name, workers, rounds, target, naive_rounds, gap, idle_waits)
            rows.append(summarize(name, group, kind, samples))
            r = rows[-1]
            ratio = r.get("fast_over_torch")
            print(
                f"  {name}: fast {fmt_ms(r['fast_ms'])} ms, torch {fmt_ms(r['torch_ms'])} ms"
                + ("" if ratio is None else f", ratio {ratio:.2f}"),
                file=sys.stderr,
            )
    finally:
        for w in workers:
            w.close()

    info["idle_wait_ms"] = idle_wait_summary(idle_waits)
    if warning := idle_wait_warning(idle_waits):
        notes.append(warning)
    info["loadavg_at_start"] = load_start
    info["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    notes += method_notes(gap, info["openblas_kernel"])
    result = {"machine": info, "rows": rows, "notes": notes, "rounds": rounds}
    if args.memory:
        mem = measure_memory(args.threads, 40 if args.quick else None)
        result["memory"] = mem
        notes.append(memory_note(mem))
    header, trows = table_rows(rows)
    title = (
        f"mlcore fast layers vs naive vs PyTorch CPU, separate processes "
        f"({args.threads} threads each, {rounds} rounds)"
    )
    print_table(header, trows, title)
    for n in notes:
        print("note:", n)
    write_results(args.out, result, header, trows)
    if args.profile:
        # one thread, CPU time: where the work goes, whatever else the machine runs; and the
        # engine's thread count, wall clock
        profs = [run_profile(t, 5 if args.quick else 30) for t in sorted({1, args.threads})]
        write_profile(args.out, profs)
    return 0
