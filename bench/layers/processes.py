"""How the parent starts its worker and child processes: their command line, their
environment, and the mlcore worker's settings such a process applies to itself."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
# this machine's environment pins OpenBLAS's kernel choice (Haswell kernels, L2 size) for old
# OpenBLAS builds; a user's machine has no such pin, so no worker or child inherits it
MACHINE_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# what the mlcore and naive workers set, to --threads: OMP_NUM_THREADS (mlcore's thread pool
# reads it, as OpenMP does), OpenBLAS and MKL (whichever BLAS numpy has)
THREAD_COUNTS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def child_command(*args: str) -> list[str]:
    """The command line of a worker or child process: this package run by this interpreter
    (started in ROOT, where ``bench`` is importable)."""
    return [sys.executable, "-m", "bench.layers", *args]


def child_env(root: Path) -> dict[str, str]:
    """The environment of a worker or child process: this one's without MACHINE_PINS, with
    ``root`` first on PYTHONPATH. This process's own environment is left as it is."""
    env = {k: v for k, v in os.environ.items() if k not in MACHINE_PINS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


def mlcore_settings(threads: int) -> None:
    """The mlcore worker's settings, before numpy loads: the thread counts (THREAD_COUNTS) set
    to ``threads``, as torch's worker sets ``torch.set_num_threads``, and nothing else (mlcore
    needs no setting to be fast, and nothing its step runs calls numpy's BLAS)."""
    for var in THREAD_COUNTS:
        os.environ[var] = str(threads)
