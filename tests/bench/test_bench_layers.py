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
    # mlcore imported plainly: its own column, its per-round ratio to the mlcore worker's
    assert all(r["plain_ms"] > 0 and r["plain_over_fast"] > 0 for r in result["rows"])
    assert set(result["machine"]["idle_wait_ms"]) == {"mlcore", "plain"}
    assert set(result["machine"]["workers"]) == {"mlcore", "plain"}
    md = (out / "layers.md").read_text()
    assert "| pool 2x2 s2, x(100,3,32,32) fwd+bwd |" in md and "| plain ms (/fast) |" in md
    assert "- plain worker (mlcore imported plainly): " in md


def openblas_architecture(env: dict[str, str]) -> str:
    """The kernel numpy's OpenBLAS picks in a fresh process with environment ``env``."""
    import subprocess

    code = (
        "import numpy, threadpoolctl; print(next(d['architecture'] for d in "
        "threadpoolctl.threadpool_info() if d['internal_api'] == 'openblas'))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def test_no_worker_inherits_the_openblas_pin_and_plain_sets_nothing(layers, monkeypatch):
    # a pin OpenBLAS honours here, unlike this CPU's own choice (Haswell kernels or newer)
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Nehalem")
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "512")
    for var in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    assert openblas_architecture(dict(os.environ)) == "Nehalem"  # the pin takes effect
    unpinned = {k: v for k, v in os.environ.items() if k not in layers.MACHINE_PINS}
    own_choice = openblas_architecture(unpinned)
    infos = {}
    for kind in ("mlcore", "plain"):
        worker = layers.Worker(kind, layers.parse_args(["--threads", "2"]))
        try:
            infos[kind] = worker.ask(cmd="info")
        finally:
            worker.close()
    for kind, info in infos.items():
        assert info["machine_pins"] == {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}
        assert not set(layers.MACHINE_PINS) & set(info["env"])
        assert info["openblas_architecture"] == own_choice != "Nehalem", kind
    # the mlcore worker sets what mlcore's entry points set; the plain one sets nothing
    assert infos["mlcore"]["env"]["OMP_WAIT_POLICY"] == "passive"
    assert infos["mlcore"]["env"]["OPENBLAS_THREAD_TIMEOUT"] == "20"
    assert not {"OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "OMP_NUM_THREADS"} & set(
        infos["plain"]["env"]
    )
    # the parent (this test's process) keeps its environment
    assert os.environ["OPENBLAS_CORETYPE"] == "Nehalem" and os.environ["OPENBLAS_L2_SIZE"] == "512"
