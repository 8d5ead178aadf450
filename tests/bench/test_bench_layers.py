"""The harness of ``python -m bench.layers``: a worker's threads are idle before the next worker
is timed, the workers' settings (thread counts only; no machine pin), a quick run writes its
results, and the profile times every part of the step (no PyTorch needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bench.layers
from bench.layers.cli import parse_args
from bench.layers.processes import MACHINE_PINS, THREAD_COUNTS
from bench.layers.report import method_notes, openblas_kernel, profile_markdown
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
    # the naive layers' products run in numpy's OpenBLAS, whose helper thread spins about 0.1 s
    # after a product at its own default (which the harness leaves as it is)
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "28")
    worker = Worker("naive", parse_args(["--threads", "2"]))
    try:
        case = "conv 7x7 s1 p3, x(50,3,32,32) w(32,3,7,7) fwd"
        assert "naive" in worker.offers[case]
        worker.ask(cmd="time", case=case, engine="naive", reps=1)
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
    assert not any("gemm" in key for r in result["rows"] for key in r)
    # mlcore imported plainly: its own column, its per-round ratio to the mlcore worker's
    assert all(r["plain_ms"] > 0 and r["plain_over_fast"] > 0 for r in result["rows"])
    assert set(result["machine"]["idle_wait_ms"]) == {"mlcore", "plain"}
    assert set(result["machine"]["workers"]) == {"mlcore", "plain"}
    md = (out / "layers.md").read_text()
    assert "| pool 2x2 s2, x(100,3,32,32) fwd+bwd |" in md and "| plain ms (/fast) |" in md
    assert "GEMM ms" not in md  # the column of the column-matrix GEMM is gone
    assert "- plain worker (mlcore imported plainly): " in md
    # the OpenBLAS kernel numpy runs in the workers, named in the machine description and notes
    kernel = result["machine"]["workers"]["mlcore"]["openblas_architecture"]
    assert kernel and result["machine"]["workers"]["plain"]["openblas_architecture"] == kernel
    assert result["machine"]["openblas_kernel"] == kernel
    assert f"- openblas_kernel: {kernel}\n" in md
    assert f"numpy's OpenBLAS runs the kernel this CPU gets ({kernel})" in result["notes"][0]


def test_the_profile_times_every_part_the_step_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "bench.layers", "--profile-child", "--threads", "1",
         "--profile-reps", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    prof = json.loads(proc.stdout.strip().splitlines()[-1])
    assert prof["clock"] == "thread CPU time" and prof["threads"] == 1
    assert prof["extension_active"] is True
    rows = {r["phase"]: r for r in prof["rows"]}
    kinds = {}
    for r in prof["rows"]:
        kinds.setdefault(r["kind"], []).append(r["phase"])
    assert kinds["conv"] == [
        "conv1 fwd: conv_forward_fast",
        "conv1 bwd: conv_backward_fast, dw and db only (cache.without_dx())",
    ]
    # the affine layers' six products, at the shapes of the step (batch 50, 8192 -> 100 -> 10)
    assert kinds["matmul"] == [
        "affine2 fwd: matmul x @ W2, 50x8192 @ 8192x100",
        "affine3 fwd: matmul x @ W3, 50x100 @ 100x10",
        "affine3 bwd: matmul dout @ W3.T, 50x10 @ 10x100",
        "affine3 bwd: matmul x.T @ dout, 100x50 @ 50x10",
        "affine2 bwd: matmul dout @ W2.T, 50x100 @ 100x8192",
        "affine2 bwd: matmul x.T @ dout, 8192x50 @ 50x100",
    ]
    assert kinds["pool"] == ["pool fwd", "pool bwd"] and len(kinds["relu"]) == 4
    assert [k.split(" (")[0] for k in kinds["adam"]] == [
        f"adam {k}" for k in ("W1", "b1", "W2", "b2", "W3", "b3")
    ]
    assert kinds["softmax"] == ["softmax loss"] and len(kinds["bias"]) == 4
    # for reference, not summed: the kernels in the conv layers, the dx the step skips
    assert kinds[None] == [
        "(in conv1 fwd: the kernel conv_forward)",
        "(in conv1 bwd: the kernel conv_backward_w)",
        "(not run: conv1 dx, the kernel conv_backward_x)",
        "whole step",
    ]
    assert all(r["ms"] > 0 for r in prof["rows"])
    for kind, names in kinds.items():
        if kind is not None:
            assert prof["by_kind"][kind] == pytest.approx(sum(rows[n]["ms"] for n in names))
    assert set(prof["by_kind"]) == {k for k in kinds if k is not None} | {"glue"}
    assert sum(prof["by_kind"].values()) == pytest.approx(prof["step_ms"])
    assert prof["step_ms"] == rows["whole step"]["ms"]
    assert prof["conv_layers_ms"] == pytest.approx(prof["by_kind"]["conv"])
    assert prof["conv_kernels_ms"] == pytest.approx(
        rows["(in conv1 fwd: the kernel conv_forward)"]["ms"]
        + rows["(in conv1 bwd: the kernel conv_backward_w)"]["ms"]
    )
    md = profile_markdown(prof)
    assert "| conv1 fwd: conv_forward_fast | conv |" in md
    assert "| (not run: conv1 dx, the kernel conv_backward_x) | - |" in md
    assert "im2col" not in md and "col2im" not in md


def test_the_results_name_the_openblas_kernel_of_the_workers():
    same = {
        "mlcore": {"openblas_architecture": "Haswell"},
        "torch": {},
        "naive": {"openblas_architecture": "Haswell"},
    }
    assert openblas_kernel(same) == "Haswell"
    both = {
        "mlcore": {"openblas_architecture": "Zen"},
        "plain": {"openblas_architecture": "Zen"},
        "naive": {"openblas_architecture": "Haswell"},
    }
    assert openblas_kernel(both) == "Haswell (naive), Zen (mlcore/plain)"
    assert openblas_kernel({"mlcore": {"openblas_architecture": None}}) is None
    assert "numpy's OpenBLAS runs the kernel this CPU gets (Zen):" in method_notes(0.02, "Zen")[0]
    assert "numpy's OpenBLAS runs the kernel this CPU gets:" in method_notes(0.02, None)[0]


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
    for var in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "GOMP_SPINCOUNT", *THREAD_COUNTS):
        monkeypatch.delenv(var, raising=False)
    assert openblas_architecture(dict(os.environ)) == "Nehalem"  # the pin takes effect
    unpinned = {k: v for k, v in os.environ.items() if k not in MACHINE_PINS}
    own_choice = openblas_architecture(unpinned)
    infos = {}
    for kind in ("mlcore", "plain", "naive"):
        worker = Worker(kind, parse_args(["--threads", "2"]))
        try:
            infos[kind] = worker.ask(cmd="info")
        finally:
            worker.close()
    for kind, info in infos.items():
        assert info["machine_pins"] == {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}
        assert not set(MACHINE_PINS) & set(info["env"])
        assert info["openblas_architecture"] == own_choice != "Nehalem", kind
    # the mlcore and naive workers set the thread counts and nothing else (no wait policy nor
    # OpenBLAS spin time: nothing the step runs calls numpy's BLAS); the plain one sets nothing
    inherited = {  # what this environment has of what worker_info reports, less the pins
        k: v
        for k, v in os.environ.items()
        if k.startswith(("OMP_", "OPENBLAS", "MKL_", "GOMP_")) and k not in MACHINE_PINS
    }
    for kind in ("mlcore", "naive"):
        assert infos[kind]["env"] == inherited | dict.fromkeys(THREAD_COUNTS, "2"), kind
        assert not {"OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT"} & set(infos[kind]["env"])
        assert infos[kind]["mlcore_kernel_threads"] == 2, kind
    assert infos["plain"]["env"] == inherited
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
