"""bench/layers.py's harness: a worker's threads are idle before the next worker is timed, and
a quick run writes its results (no PyTorch needed)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.skipif(
        not Path("/proc/self/task").is_dir(), reason="the harness reads thread states in /proc"
    ),
    # OpenBLAS starts no helper thread (nothing to spin) on one CPU
    pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPUs"),
]


@pytest.fixture(scope="module")
def layers():
    spec = importlib.util.spec_from_file_location("bench_layers", ROOT / "bench" / "layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_hand_over_waits_for_the_previous_workers_spinning_blas_thread(layers, monkeypatch):
    # OpenBLAS's own default: its helper thread spins about 0.1 s after a GEMM
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "28")
    worker = layers.Worker("mlcore", layers.parse_args(["--threads", "2"]))
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
    import subprocess

    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "layers.py"), "--quick", "--no-naive",
         "--no-torch", "--only", "pool 2x2 s2, x(100", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "layers.json").read_text())
    cases = [r["case"] for r in result["rows"]]
    assert cases == [f"pool 2x2 s2, x(100,3,32,32) {p}" for p in ("fwd", "bwd", "fwd+bwd")]
    assert all(r["fast_ms"] > 0 and r["torch_ms"] is None for r in result["rows"])
    assert set(result["machine"]["idle_wait_ms"]) == {"mlcore"}
    assert "| pool 2x2 s2, x(100,3,32,32) fwd+bwd |" in (out / "layers.md").read_text()
