"""The same bits whatever runs it: a training and every kernel give bit-identical results on
1, 2 and 3 threads (each in its own process with OMP_NUM_THREADS and OPENBLAS_NUM_THREADS set
to N, as a Dask worker or another machine sets them), and two trainings in two threads of one
process give what each gives alone."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from mlcore.nn import fast_layers as fl

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.skipif(not fl.HAVE_EXTENSION, reason="mlcore.nn._fast is not built")

# one process: the case (digits, lr 0.03, batch 50, seed 9, 40 epochs) and every
# kernel's outputs and gradients on the benchmark's shapes, as sha256 digests
SCRIPT = r"""
import hashlib, json, sys
import numpy as np
from mlcore.data.images import load_digits_data
from mlcore.nn import fast_layers as fl
from mlcore.nn.cnn import ThreeLayerConvNet
from mlcore.nn.linalg import matmul
from mlcore.nn.solver import Solver

def digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()

out = {}
data = load_digits_data(dtype=np.float32)
model = ThreeLayerConvNet(input_dim=(1, 8, 8), num_filters=16, filter_size=3, hidden_dim=64,
                          weight_scale=0.1, seed=9, dtype=np.float32)
solver = Solver(model, data, update_rule="adam", optim_config={"learning_rate": 0.03},
                batch_size=50, num_epochs=int(sys.argv[1]), seed=9, verbose=False)
solver.train()
acc = solver.check_accuracy(data["X_test"], data["y_test"])
params = [model.params[k] for k in sorted(model.params)]
out["training"] = digest(np.asarray(solver.loss_history), *params)
out["test_acc"] = float(acc)
out["loss_3"] = float(solver.loss_history[3])
rng = np.random.default_rng(0)
for name, xs, ws, stride, pad in [("3x3", (100, 3, 31, 31), (25, 3, 3, 3), 2, 1),
                                  ("7x7", (50, 3, 32, 32), (32, 3, 7, 7), 1, 3)]:
    for dt in (np.float32, np.float64):
        x = rng.standard_normal(xs).astype(dt)
        w = rng.standard_normal(ws).astype(dt)
        b = rng.standard_normal(ws[0]).astype(dt)
        o, cache = fl.conv_forward_fast(x, w, b, {"stride": stride, "pad": pad})
        d = rng.standard_normal(o.shape).astype(dt)
        out[f"conv {name} {dt.__name__}"] = digest(o, *fl.conv_backward_fast(d, cache))
        p, pc = fl.max_pool_forward_fast(o, {"pool_height": 2, "pool_width": 2, "stride": 2})
        out[f"pool {name} {dt.__name__}"] = digest(p, fl.max_pool_backward_fast(p, pc))
for m, k, n in [(50, 8192, 100), (8192, 50, 100), (147, 32, 51200)]:
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    out[f"matmul {m}x{k}x{n}"] = digest(matmul(a, b), matmul(b.T, a.T))
print(json.dumps(out))
"""


def _run(threads: int, epochs: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(epochs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_training_and_kernels_give_the_same_bits_on_1_2_and_3_threads():
    runs = {n: _run(n, epochs=40) for n in (1, 2, 3)}
    assert runs[1]["test_acc"] > 0.9  # a real training, not a constant
    for n in (2, 3):
        assert runs[n] == runs[1], {
            k: (runs[1][k], runs[n][k]) for k in runs[1] if runs[1][k] != runs[n][k]
        }


def _train(seed: int) -> tuple[str, list[float]]:
    from mlcore.data.images import load_digits_data
    from mlcore.nn.cnn import ThreeLayerConvNet
    from mlcore.nn.solver import Solver

    data = load_digits_data(dtype=np.float32)
    model = ThreeLayerConvNet(
        input_dim=(1, 8, 8), num_filters=8, filter_size=3, hidden_dim=32, weight_scale=0.1,
        seed=seed, dtype=np.float32,
    )  # fmt: skip
    solver = Solver(
        model, data, update_rule="adam", optim_config={"learning_rate": 1e-2}, batch_size=50,
        num_epochs=2, seed=seed, verbose=False,
    )  # fmt: skip
    solver.train()
    h = hashlib.sha256(np.asarray(solver.loss_history).tobytes())
    for k in sorted(model.params):
        h.update(model.params[k].tobytes())
    return h.hexdigest(), solver.loss_history


def test_two_trainings_in_two_threads_match_each_alone():
    alone = {seed: _train(seed) for seed in (1, 2)}
    together: dict[int, tuple] = {}
    threads = [
        threading.Thread(target=lambda s=seed: together.__setitem__(s, _train(s)))
        for seed in (1, 2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert alone[1][0] != alone[2][0]  # two different trainings
    assert together == alone


FORK = r"""
import os, sys
import numpy as np
from mlcore.nn import _fast
from mlcore.nn.linalg import matmul

_fast.set_num_threads(2)
rng = np.random.default_rng(0)
a, b = rng.standard_normal((300, 200)), rng.standard_normal((200, 400))
before = matmul(a, b)  # the pool's workers are running now
pid = os.fork()
if pid == 0:  # the child has none of them: its pool starts afresh
    ok = np.array_equal(matmul(a, b), before)
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_the_kernels_work_in_a_forked_child():
    """multiprocessing and Dask may fork a process whose kernels have run: the child's own
    loops must run (not wait for the parent's workers, which it does not have)."""
    proc = subprocess.run(
        [sys.executable, "-c", FORK], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_convolution_paths_give_the_same_bits(dtype):
    """A stride-1 convolution whose output rows fill whole kernel panels is read straight from
    the padded image; other widths pack the column matrix. Both sum in the same order: an
    output that does not see the extra input column is the same bits either way."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 32, 33)).astype(dtype)
    w = rng.standard_normal((8, 3, 7, 7)).astype(dtype)
    b = rng.standard_normal(8).astype(dtype)
    cp = {"stride": 1, "pad": 3}
    wide, _ = fl.conv_forward_fast(x, w, b, cp)  # Wo = 33: packed
    narrow, _ = fl.conv_forward_fast(np.ascontiguousarray(x[..., :32]), w, b, cp)  # in place
    np.testing.assert_array_equal(narrow[..., :29], wide[..., :29])
    assert not np.array_equal(narrow[..., 29:], wide[..., 29:32])  # those do see it


def test_the_portable_kernel_gives_the_avx2_kernels_bits():
    """Where the CPU has no AVX2/FMA the products run a portable C kernel (C99 fma): every
    result must be the same bits as the AVX2 kernel's (the product, the convolution's in-place
    and packed paths, its weight and input gradients, float32 and float64)."""
    from mlcore.nn import _fast
    from mlcore.nn.linalg import matmul

    rng = np.random.default_rng(6)

    def results():
        out = []
        for dt in (np.float32, np.float64):
            a, b = rng.standard_normal((37, 300)).astype(dt), rng.standard_normal((300, 41))
            out.append(matmul(a, b.astype(dt)))
            for xs, ws, cp in [
                ((3, 2, 9, 16), (5, 2, 3, 3), {"stride": 1, "pad": 1}),  # in place
                ((3, 2, 9, 13), (5, 2, 3, 3), {"stride": 2, "pad": 1}),  # packed
            ]:
                x, w = rng.standard_normal(xs).astype(dt), rng.standard_normal(ws).astype(dt)
                o, cache = fl.conv_forward_fast(x, w, rng.standard_normal(ws[0]).astype(dt), cp)
                out += [o, *fl.conv_backward_fast(rng.standard_normal(o.shape).astype(dt), cache)]
        return out

    state = rng.bit_generator.state
    fast = results()
    rng.bit_generator.state = state
    had_avx2 = _fast.use_portable_kernel(True)
    try:
        portable = results()
    finally:
        _fast.use_portable_kernel(False)
    if not had_avx2:
        pytest.skip("this CPU has no AVX2/FMA: only the portable kernel runs")
    for f, p in zip(fast, portable, strict=True):
        np.testing.assert_array_equal(f, p)
