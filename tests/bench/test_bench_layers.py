"""The harness of ``python -m bench.layers``: a worker's threads are idle before the next worker
is timed, and a quick run writes its results (no PyTorch needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bench.layers
from bench.layers.cli import parse_args
from bench.layers.processes import MACHINE_PINS
from bench.layers.worker import Worker

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.skipif(
        not Path("/proc/self/task").is_dir(), reason="the harness reads thread states in /proc"
    ),
    # OpenBLAS starts no helper thread (nothing to spin) on one CPU
    pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPUs"),
]


def test_nothing_before_a_workers_settings_imports_numpy():
    # a worker applies its settings (OMP_*, OPENBLAS_*) in main(), before it imports numpy:
    # nothing on the way to main() may import it first
    code = (
        "import sys, bench.layers.__main__; print(sorted({'numpy', 'mlcore'} & set(sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == "[]"


def test_help_shows_the_packages_docstring():
    proc = subprocess.run(
        [sys.executable, "-m", "bench.layers", "--help"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert proc.stdout.startswith("usage: python -m bench.layers [-h]")
    assert bench.layers.__doc__.strip() in proc.stdout


def test_a_hand_over_waits_for_the_previous_workers_spinning_blas_thread(monkeypatch):
    # OpenBLAS's own default: its helper thread spins about 0.1 s after a GEMM
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "28")
    worker = Worker("mlcore", parse_args(["--threads", "2"]))
    try:
        case = "conv 7x7 s1 p3, x(50,3,32,32) w(32,3,7,7) fwd"
        assert "gemm" in worker.offers[case]
        worker.ask(cmd="time", case=case, engine="gemm", reps=3)
        assert worker.running_threads() >= 1  # the helper still spins after the answer came
        waited = worker.wait_idle(2.0)
        assert worker.running_threads() == 0
        assert 0.01 < waited < 2.0
        # an idle worker is handed over at once
        assert worker.wait_idle(2.0) < 0.5
    finally:
        worker.close()
    assert worker.proc.returncode == 0


def test_a_quick_run_writes_its_table_and_the_idle_waits(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.layers", "--quick", "--no-naive", "--no-torch",
         "--only", "pool 2x2 s2, x(100", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "layers.json").read_text())
    cases = [r["case"] for r in result["rows"]]
    assert cases == [f"pool 2x2 s2, x(100,3,32,32) {p}" for p in ("fwd", "bwd", "fwd+bwd")]
    assert all(r["fast_ms"] > 0 and r["torch_ms"] is None for r in result["rows"])
    # mlcore imported plainly: its own column, its per-round ratio to the mlcore worker's
    assert all(r["plain_ms"] > 0 and r["plain_over_fast"] > 0 for r in result["rows"])
    assert set(result["machine"]["idle_wait_ms"]) == {"mlcore", "plain"}
    assert set(result["machine"]["workers"]) == {"mlcore", "plain"}
    md = (out / "layers.md").read_text()
    assert "| pool 2x2 s2, x(100,3,32,32) fwd+bwd |" in md and "| plain ms (/fast) |" in md
    assert "- plain worker (mlcore imported plainly): " in md


def openblas_architecture(env: dict[str, str]) -> str:
    """The kernel numpy's OpenBLAS picks in a fresh process with environment ``env``."""
    code = (
        "import numpy, threadpoolctl; print(next(d['architecture'] for d in "
        "threadpoolctl.threadpool_info() if d['internal_api'] == 'openblas'))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def test_no_worker_inherits_the_openblas_pin_and_plain_sets_nothing(monkeypatch):
    # a pin OpenBLAS honours here, unlike this CPU's own choice (Haswell kernels or newer)
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Nehalem")
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "512")
    for var in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    assert openblas_architecture(dict(os.environ)) == "Nehalem"  # the pin takes effect
    unpinned = {k: v for k, v in os.environ.items() if k not in MACHINE_PINS}
    own_choice = openblas_architecture(unpinned)
    infos = {}
    for kind in ("mlcore", "plain"):
        worker = Worker(kind, parse_args(["--threads", "2"]))
        try:
            infos[kind] = worker.ask(cmd="info")
        finally:
            worker.close()
    for kind, info in infos.items():
        assert info["machine_pins"] == {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}
        assert not set(MACHINE_PINS) & set(info["env"])
        assert info["openblas_architecture"] == own_choice != "Nehalem", kind
    # the mlcore worker sets what mlcore's entry points set; the plain one sets nothing
    assert infos["mlcore"]["env"]["OMP_WAIT_POLICY"] == "passive"
    assert infos["mlcore"]["env"]["OPENBLAS_THREAD_TIMEOUT"] == "20"
    assert not {"OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "OMP_NUM_THREADS"} & set(
        infos["plain"]["env"]
    )
    # the parent (this test's process) keeps its environment
    assert os.environ["OPENBLAS_CORETYPE"] == "Nehalem" and os.environ["OPENBLAS_L2_SIZE"] == "512"


def test_an_mlcore_path_is_where_the_workers_import_mlcore_from_wherever_the_parent_runs(
    monkeypatch, tmp_path
):
    # another checkout (here: a directory holding this one's mlcore), given relative to a
    # parent that runs outside the repository
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mlcore").symlink_to(ROOT / "mlcore", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for kind in ("mlcore", "plain", "naive"):
        worker = Worker(kind, parse_args(["--mlcore-path", "other"]))
        try:
            info = worker.ask(cmd="info")
        finally:
            worker.close()
        assert info["mlcore"] == str(tmp_path / "other" / "mlcore"), kind
