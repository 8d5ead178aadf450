"""Benchmark mlcore's fast conv / pool layers and training step against PyTorch (CPU), and the
naive layers, each engine in its own process.

    python bench/layers.py [--threads 2] [--rounds 25] [--quick] [--memory] [--profile]
                           [--no-naive] [--no-torch] [--no-plain]

Two engines in one process share cores, thread pools and settings, and their timings say
more about their interference than about either. So every engine runs in its own worker
process (this script with ``--worker``) with its own defaults:

* the **mlcore** worker (fast layers, the GEMM share, the ThreeLayerConvNet step) sets what
  mlcore's entry points set: ``OMP_WAIT_POLICY=passive`` and ``OPENBLAS_THREAD_TIMEOUT=20``
  (unless the environment sets them) and ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` =
  ``--threads``, before numpy is imported;
* the **plain** worker is mlcore imported plainly, as a notebook gets it: the mlcore worker's
  fast layers and step with nothing set by the harness (no ``OMP_WAIT_POLICY``,
  ``OPENBLAS_THREAD_TIMEOUT`` nor thread counts; what the environment sets, it inherits),
  its "plain" column beside "fast";
* the **torch** worker changes nothing but ``torch.set_num_threads(--threads)``;
* the **naive** worker (mlcore's naive layers) has the mlcore worker's settings.

No worker (nor the ``--memory`` / ``--profile`` child) inherits ``OPENBLAS_CORETYPE`` or
``OPENBLAS_L2_SIZE`` (``MACHINE_PINS``): the machine this project is developed on pins
OpenBLAS's kernels with them for old builds, a user's machine does not. The parent process
keeps its environment; each worker reports the OpenBLAS kernel it runs (threadpoolctl's
``architecture``) in the results.

The parent process only coordinates: for each case it has every worker warm up and pick how
many back-to-back calls make one sample (``--sample-ms``, 100 ms by default: several training
steps, so that the first call after another worker's turn, with caches the other worker
evicted, weighs little; ~8 ms with ``--quick``), then runs the rounds,
asking one worker at a time for a sample (the order alternates every round). Before each
hand-over the parent waits until none of the previous worker's threads is runnable (read from
/proc: OpenBLAS keeps its threads spinning for about 0.1 s after a GEMM, PyTorch's OpenMP for a
about 8 ms, and a worker timed beside them shares the two cores), then a short pause more; the
median and longest wait per worker (each at least the ~1 ms between two looks) are in the
results, and a warning when a wait gave up or /proc could not tell. Each figure is the median over
rounds; each fast/torch figure is the median of the per-round ratios with their min-max. The
table is printed (with rich if available) and written to bench/results/layers.json and
layers.md with the machine description, the load average and each worker's thread pools.

``--memory`` also runs one epoch of ThreeLayerConvNet training steps (batch 50) over a
49,000 x 3 x 32 x 32 float32 array in a child process with the mlcore worker's settings, and
reports the peak memory (tracemalloc peak and peak RSS growth) against the dataset size.

``--profile`` also times the mlcore training step phase by phase (per layer: im2col, GEMM,
col2im, pool, affine, relu, softmax, adam, and the Python between them) and writes
bench/results/profile.{json,md}.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TARGETS = {"conv fwd": 1.3, "conv fwd+bwd": 1.0, "pool fwd+bwd": 1.0, "step float32": 1.0}
STRETCH_STEP = 0.75


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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


WORKER_KINDS = ("mlcore", "plain", "torch", "naive")
# this machine's environment pins OpenBLAS's kernel choice (Haswell kernels, L2 size) for old
# OpenBLAS builds; a user's machine has no such pin, so no worker or child inherits it
MACHINE_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def child_env(root: Path) -> dict[str, str]:
    """The environment of a worker or child process: this one's without MACHINE_PINS, with
    ``root`` first on PYTHONPATH. This process's own environment is left as it is."""
    env = {k: v for k, v in os.environ.items() if k not in MACHINE_PINS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


def mlcore_settings(threads: int) -> None:
    """The mlcore worker's settings (what mlcore's entry points set); before numpy loads."""
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


# --------------------------------------------------------------------------------------------
# cases: every worker builds the same list from the same seeds and offers its own engines


CONV_SPECS = [
    ("conv 3x3 s2 p1, x(100,3,31,31) w(25,3,3,3)", (100, 3, 31, 31), (25, 3, 3, 3), 2, 1),
    ("conv 7x7 s1 p3, x(50,3,32,32) w(32,3,7,7)", (50, 3, 32, 32), (32, 3, 7, 7), 1, 3),
]
POOL_SPECS = [
    ("pool 2x2 s2, x(100,3,32,32)", (100, 3, 32, 32), 2, 2),
    ("pool 3x3 s2, x(100,3,32,32)", (100, 3, 32, 32), 3, 2),
    ("pool 2x2 s2, x(50,32,32,32)", (50, 32, 32, 32), 2, 2),
    ("pool 3x3 s2, x(50,32,32,32)", (50, 32, 32, 32), 3, 2),
]
PHASES = ("fwd", "bwd", "fwd+bwd")


def case_list():
    """(case name, group, target kind) in benchmark order."""
    out = []
    for label, *_ in CONV_SPECS:
        for what in PHASES:
            kind = {"fwd": "conv fwd", "fwd+bwd": "conv fwd+bwd"}.get(what)
            out.append((f"{label} {what}", "conv", kind))
    for label, *_ in POOL_SPECS:
        for what in PHASES:
            out.append((f"{label} {what}", "pool", "pool fwd+bwd" if what == "fwd+bwd" else None))
    out.append(("ThreeLayerConvNet train step, batch 50, float32", "step", "step float32"))
    out.append(("ThreeLayerConvNet train step, batch 50, float64", "step", None))
    return out


def conv_data(np, xs, ws, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(np.float32)
    w = (0.1 * rng.standard_normal(ws)).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    return rng, x, w, b


def mlcore_engines(np):
    """{case: {"fast": fn, "gemm": fn}} for the mlcore worker."""
    from mlcore.nn import fast_layers as fl

    engines = {}
    for k, (label, xs, ws, stride, pad) in enumerate(CONV_SPECS):
        rng, x, w, b = conv_data(np, xs, ws, k)
        cp = {"stride": stride, "pad": pad}
        out, cache = fl.conv_forward_fast(x, w, b, cp)
        dout = rng.standard_normal(out.shape).astype(np.float32)
        N = xs[0]
        F, C, HH, WW = ws
        K, P = C * HH * WW, out.shape[2] * out.shape[3]
        cols = cache.cols  # (K + 1, N, P): receptive fields, then a row of ones
        wb = np.concatenate([w.reshape(F, K), b[:, None]], axis=1)
        w2t = w.reshape(F, K).T
        res = np.empty((F, N * P), np.float32)
        dcols = np.empty((K, N * P), np.float32)
        dflat = np.ascontiguousarray(dout.reshape(N, F, P).transpose(1, 0, 2)).reshape(F, N * P)

        def gemm_fwd(wb=wb, cols=cols, res=res):
            np.matmul(wb, cols.reshape(cols.shape[0], -1), out=res)

        def gemm_bwd(w2t=w2t, cols=cols, dflat=dflat, dcols=dcols):
            np.matmul(dflat, cols.reshape(cols.shape[0], -1).T)
            np.matmul(w2t, dflat, out=dcols)

        def gemm_fb(f=gemm_fwd, g=gemm_bwd):
            f()
            g()

        def fast_fwd(x=x, w=w, b=b, cp=cp):
            fl.conv_forward_fast(x, w, b, cp)

        def fast_bwd(dout=dout, cache=cache):
            fl.conv_backward_fast(dout, cache)

        def fast_fb(x=x, w=w, b=b, cp=cp, dout=dout):
            _, c = fl.conv_forward_fast(x, w, b, cp)
            fl.conv_backward_fast(dout, c)

        for what, fast, gemm in zip(
            PHASES, (fast_fwd, fast_bwd, fast_fb), (gemm_fwd, gemm_bwd, gemm_fb), strict=True
        ):
            engines[f"{label} {what}"] = {"fast": fast, "gemm": gemm}
    pool_engines(np, engines, "fast", fl.max_pool_forward_fast, fl.max_pool_backward_fast)
    for dtype, name in ((np.float32, "float32"), (np.float64, "float64")):
        step = make_mlcore_step(np, dtype)
        engines[f"ThreeLayerConvNet train step, batch 50, {name}"] = {"fast": step}
    return engines


def plain_engines(np):
    """{case: {"plain": fn}}: the mlcore worker's fast engines, for mlcore imported plainly."""
    return {case: {"plain": e["fast"]} for case, e in mlcore_engines(np).items()}


def pool_engines(np, engines, engine, forward, backward):
    """Add the POOL_SPECS cases (fwd, bwd, fwd+bwd) of one engine's max pooling to engines."""
    for k, (label, xs, size, s) in enumerate(POOL_SPECS):
        rng = np.random.default_rng(100 + k)
        x = rng.standard_normal(xs).astype(np.float32)
        pp = {"pool_height": size, "pool_width": size, "stride": s}
        out, cache = forward(x, pp)
        dout = rng.standard_normal(out.shape).astype(np.float32)
        fns = (
            lambda x=x, pp=pp: forward(x, pp),
            lambda d=dout, c=cache: backward(d, c),
            lambda x=x, pp=pp, d=dout: backward(d, forward(x, pp)[1]),
        )
        for what, fn in zip(PHASES, fns, strict=True):
            engines[f"{label} {what}"] = {engine: fn}


def naive_engines(np):
    from mlcore.nn import layers as L

    engines = {}
    for k, (label, xs, ws, stride, pad) in enumerate(CONV_SPECS):
        rng, x, w, b = conv_data(np, xs, ws, k)
        cp = {"stride": stride, "pad": pad}
        out, cache = L.conv_forward_naive(x, w, b, cp)
        dout = rng.standard_normal(out.shape).astype(np.float32)
        fns = (
            lambda x=x, w=w, b=b, cp=cp: L.conv_forward_naive(x, w, b, cp),
            lambda d=dout, c=cache: L.conv_backward_naive(d, c),
            lambda x=x, w=w, b=b, cp=cp, d=dout: L.conv_backward_naive(
                d, L.conv_forward_naive(x, w, b, cp)[1]
            ),
        )
        for what, fn in zip(PHASES, fns, strict=True):
            engines[f"{label} {what}"] = {"naive": fn}
    pool_engines(np, engines, "naive", L.max_pool_forward_naive, L.max_pool_backward_naive)
    return engines


def torch_engines(np, torch):
    F_ = torch.nn.functional
    engines = {}
    for k, (label, xs, ws, stride, pad) in enumerate(CONV_SPECS):
        rng, x, w, b = conv_data(np, xs, ws, k)
        xt = torch.from_numpy(x).requires_grad_()
        wt = torch.from_numpy(w).requires_grad_()
        bt = torch.from_numpy(b).requires_grad_()
        graph = F_.conv2d(xt, wt, bt, stride=stride, padding=pad)
        dt_ = torch.from_numpy(rng.standard_normal(tuple(graph.shape)).astype(np.float32))

        def t_fwd(xt=xt, wt=wt, bt=bt, s=stride, p=pad):
            with torch.no_grad():
                F_.conv2d(xt, wt, bt, stride=s, padding=p)

        def t_bwd(graph=graph, dt_=dt_, ts=(xt, wt, bt)):
            for t in ts:
                t.grad = None
            graph.backward(dt_, retain_graph=True)

        def t_fb(xt=xt, wt=wt, bt=bt, s=stride, p=pad, dt_=dt_):
            for t in (xt, wt, bt):
                t.grad = None
            F_.conv2d(xt, wt, bt, stride=s, padding=p).backward(dt_)

        for what, fn in zip(PHASES, (t_fwd, t_bwd, t_fb), strict=True):
            engines[f"{label} {what}"] = {"torch": fn}
    for k, (label, xs, size, s) in enumerate(POOL_SPECS):
        rng = np.random.default_rng(100 + k)
        x = rng.standard_normal(xs).astype(np.float32)
        xt = torch.from_numpy(x).requires_grad_()
        graph = F_.max_pool2d(xt, size, s)
        dt_ = torch.from_numpy(rng.standard_normal(tuple(graph.shape)).astype(np.float32))

        def p_fwd(xt=xt, k=size, s=s):
            with torch.no_grad():
                F_.max_pool2d(xt, k, s)

        def p_bwd(graph=graph, dt_=dt_, xt=xt):
            xt.grad = None
            graph.backward(dt_, retain_graph=True)

        def p_fb(xt=xt, k=size, s=s, dt_=dt_):
            xt.grad = None
            F_.max_pool2d(xt, k, s).backward(dt_)

        for what, fn in zip(PHASES, (p_fwd, p_bwd, p_fb), strict=True):
            engines[f"{label} {what}"] = {"torch": fn}
    for dtype, name in ((np.float32, "float32"), (np.float64, "float64")):
        engines[f"ThreeLayerConvNet train step, batch 50, {name}"] = {
            "torch": make_torch_step(torch, np, dtype)
        }
    return engines


def make_mlcore_step(np, dtype, N=50, seed=0):
    """One ThreeLayerConvNet training step as the Solver runs it: loss + grads + adam on
    every parameter (layer_utils' default conv / pool: the fast layers)."""
    from mlcore.nn.cnn import ThreeLayerConvNet
    from mlcore.nn.optim import adam

    model = ThreeLayerConvNet(dtype=dtype, weight_scale=1e-2, seed=seed)
    configs = {k: {"learning_rate": 1e-3} for k in model.params}
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, 3, 32, 32)).astype(dtype)
    y = rng.integers(0, 10, N)

    def step(X=X, y=y):
        loss, grads = model.loss(X, y)
        for k, g in grads.items():
            model.params[k], configs[k] = adam(model.params[k], g, configs[k])
        return loss

    return step


def make_torch_step(torch, np, dtype, N=50, seed=0):
    torch.manual_seed(seed)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(3, 32, 7, padding=3),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(32 * 16 * 16, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    model = model.to(tdtype)
    crit = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    X = torch.from_numpy(rng.standard_normal((N, 3, 32, 32)).astype(dtype))
    y = torch.from_numpy(rng.integers(0, 10, N))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = crit(model(X), y)
        loss.backward()
        opt.step()

    return step


# --------------------------------------------------------------------------------------------
# worker: one engine per process, driven over stdin / stdout (one JSON object per line)


def worker_info(np, torch, threads):
    info = {
        "pid": os.getpid(),
        "numpy": np.__version__,
        "env": {
            k: v
            for k, v in sorted(os.environ.items())
            if k.startswith(("OMP_", "OPENBLAS", "MKL_", "GOMP_"))
        },
    }
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    else:
        try:
            from mlcore.nn import _fast

            info["mlcore_kernel_threads"] = _fast.get_num_threads()
        except ImportError:
            info["mlcore_kernel_threads"] = None
        import mlcore
        from mlcore.nn import fast_layers as fl

        info["mlcore"] = str(Path(mlcore.__file__).parent)
        info["mlcore_extension_active"] = fl.extension_active()
    info["machine_pins"] = {v: os.environ.get(v) for v in MACHINE_PINS}
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001 - best effort description
        info["numpy_blas"] = None
    try:
        from threadpoolctl import threadpool_info

        pools = threadpool_info()
        keys = ("user_api", "internal_api", "version", "num_threads", "architecture")
        info["threadpools"] = [
            {k: d.get(k) for k in keys} | {"lib": Path(d.get("filepath", "")).name} for d in pools
        ]
        # the kernel numpy's OpenBLAS runs (what numpy.show_runtime() prints as architecture)
        info["openblas_architecture"] = next(
            (d.get("architecture") for d in pools if d.get("internal_api") == "openblas"), None
        )
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
        info["openblas_architecture"] = None
    return info


def run_worker(args) -> int:
    # the protocol owns the real stdout; anything a library prints goes to stderr
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    torch = None
    if args.worker in ("mlcore", "naive"):
        mlcore_settings(args.threads)
        import numpy as np

        sys.path.insert(0, str(args.mlcore_path or ROOT))
        engines = mlcore_engines(np) if args.worker == "mlcore" else naive_engines(np)
    elif args.worker == "plain":  # as a notebook imports mlcore: nothing set
        import numpy as np

        sys.path.insert(0, str(args.mlcore_path or ROOT))
        engines = plain_engines(np)
    else:
        import numpy as np
        import torch

        torch.set_num_threads(args.threads)
        engines = torch_engines(np, torch)

    def reply(obj):
        proto.write(json.dumps(obj) + "\n")

    reply({"ready": sorted((c, sorted(e)) for c, e in engines.items())})
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        if cmd == "quit":
            break
        if cmd == "info":
            reply(worker_info(np, torch, args.threads))
            continue
        fn = engines[msg["case"]][msg["engine"]]
        if cmd == "calibrate":
            t0 = time.perf_counter()
            fn()
            first = time.perf_counter() - t0
            fn()
            t0 = time.perf_counter()
            fn()
            one = max(time.perf_counter() - t0, 1e-7)
            reply({"first": first, "one": one, "reps": max(1, int(msg["target"] / one))})
        elif cmd == "time":
            reps = msg["reps"]
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            reply({"seconds": (time.perf_counter() - t0) / reps})
    return 0


class Worker:
    def __init__(self, kind, args):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind]
        cmd += ["--threads", str(args.threads)]
        if args.mlcore_path is not None:
            cmd += ["--mlcore-path", str(args.mlcore_path.resolve())]
        env = child_env(args.mlcore_path or ROOT)
        self.kind = kind
        self.proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        ready = self._read()
        self.offers = {c: set(e) for c, e in ready["ready"]}

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.kind} worker exited (code {self.proc.wait()})")
        return json.loads(line)

    def ask(self, **msg):
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def running_threads(self) -> int | None:
        """How many of the worker's threads are runnable (state R), None where /proc is not."""
        try:
            tasks = os.listdir(f"/proc/{self.proc.pid}/task")
        except OSError:
            return None
        n = 0
        for tid in tasks:
            try:
                with open(f"/proc/{self.proc.pid}/task/{tid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue  # the thread ended
            n += stat[stat.rfind(")") + 2] == "R"
        return n

    def wait_idle(self, timeout: float) -> float | None:
        """Wait until none of the worker's threads runs (twice in a row, 1 ms apart), at most
        ``timeout`` s; return the seconds waited (at least the ~1 ms between the two looks),
        None where /proc cannot tell. After its last GEMM OpenBLAS keeps its threads
        spinning for about 0.1 s, PyTorch's OpenMP for about 8 ms: a worker timed while
        another one's threads still spin shares the cores with them."""
        t0 = time.perf_counter()
        quiet = 0
        while True:
            n = self.running_threads()
            if n is None:
                return None
            quiet = quiet + 1 if n == 0 else 0
            if quiet == 2 or time.perf_counter() - t0 >= timeout:
                return time.perf_counter() - t0
            time.sleep(0.001)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


IDLE_TIMEOUT = 2.0  # seconds a hand-over waits at most for the previous worker's threads


def run_case(case, workers, rounds, target, naive_rounds, gap, idle_waits=None):
    """Samples per engine of one case: {engine: [seconds per call, one per round]}. Between
    two samples the previous worker's threads are let go idle (``Worker.wait_idle``; the
    seconds waited are appended to ``idle_waits[worker kind]``), then ``gap`` s more."""

    def hand_over(w):
        waited = w.wait_idle(IDLE_TIMEOUT)
        if idle_waits is not None:
            idle_waits.setdefault(w.kind, []).append(waited)
        time.sleep(gap)

    slots = []  # (worker, engine, reps)
    for w in workers:
        for engine in sorted(w.offers.get(case, ())):
            cal = w.ask(cmd="calibrate", case=case, engine=engine, target=target)
            hand_over(w)
            if engine == "naive" and cal["first"] > 20.0:
                continue
            slots.append((w, engine, cal["reps"]))
    samples = {engine: [] for _, engine, _ in slots}
    for r in range(rounds):
        order = slots if r % 2 == 0 else slots[::-1]  # alternate who goes first
        for w, engine, reps in order:
            if engine == "naive" and len(samples[engine]) >= naive_rounds:
                continue
            samples[engine].append(
                w.ask(cmd="time", case=case, engine=engine, reps=reps)["seconds"]
            )
            hand_over(w)
    return samples


# --------------------------------------------------------------------------------------------
# profile of the mlcore step (in the mlcore worker's settings)


def profile_step(reps: int, cpu: bool) -> dict:
    """Median milliseconds of every phase of one ThreeLayerConvNet training step, each phase
    run on its own on the inputs the real step gives it, and of the whole step; the Python
    between the layers is the whole step minus the phases. ``cpu``: the calling thread's CPU
    time (meant for one thread: robust on a loaded machine, where wall time also counts the
    time the process waits for a core), else wall-clock time."""
    clock = time.thread_time if cpu else time.perf_counter
    import numpy as np

    from mlcore.nn import fast_layers as fl
    from mlcore.nn import layers as L
    from mlcore.nn.cnn import ThreeLayerConvNet
    from mlcore.nn.optim import adam

    dt = np.float32
    model = ThreeLayerConvNet(dtype=dt, weight_scale=1e-2, seed=0)
    p = model.params
    configs = {k: {"learning_rate": 1e-3} for k in p}
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3, 32, 32)).astype(dt)
    y = rng.integers(0, 10, 50)
    cp, pp = model.conv_param, model.pool_param
    N, F, HH, WW = 50, 32, 7, 7
    K, P = 3 * HH * WW, 32 * 32

    # the intermediate values of one step
    # conv -> pool -> relu: what layer_utils.conv_relu_pool_forward computes
    a, conv_cache = fl.conv_forward_fast(X, p["W1"], p["b1"], cp)
    pooled, pool_cache = fl.max_pool_forward_fast(a, pp)
    h1, _ = L.relu_forward(pooled)
    z, fc2 = L.affine_forward(h1, p["W2"], p["b2"])
    h2, _ = L.relu_forward(z)
    scores, fc3 = L.affine_forward(h2, p["W3"], p["b3"])
    _, dscores = L.softmax_loss(scores, y)
    dh2, dW3, _ = L.affine_backward(dscores, fc3)
    dz = L.relu_backward(dh2, z)
    dh1, dW2, _ = L.affine_backward(dz, fc2)
    dp = L.relu_backward(dh1, pooled)
    da = fl.max_pool_backward_fast(dp, pool_cache)
    cols = conv_cache.cols
    wb = np.concatenate([p["W1"].reshape(F, K), p["b1"][:, None]], axis=1)
    res = np.empty((F, N * P), dt)
    nchw = np.empty((N, F, P), dt)
    dflat = np.ascontiguousarray(da.reshape(N, F, P).transpose(1, 0, 2)).reshape(F, N * P)
    grads = model.loss(X, y)[1]
    dcols = np.empty((K, N * P), dt)
    ext = fl._fast if fl.extension_active() else None

    def im2col():
        if ext is not None:
            ext.im2col(X, cols.reshape(-1), HH, WW, 1, 3, 32, 32, N * P, P)

    def col2im():
        if ext is not None:
            ext.col2im(dcols.reshape(-1), np.empty(X.shape, dt), HH, WW, 1, 3, 32, 32, N * P, P)

    def full_step():
        loss, g = model.loss(X, y)
        for k, gk in g.items():
            p[k], configs[k] = adam(p[k], gk, configs[k])

    phases = [
        ("conv1 fwd: im2col", "im2col", im2col),
        ("conv1 fwd: GEMM", "GEMM", lambda: np.matmul(wb, cols.reshape(K + 1, -1), out=res)),
        (
            "conv1 fwd: (F, N*P) to NCHW",
            "copies",
            lambda: np.copyto(nchw, res.reshape(F, N, P).transpose(1, 0, 2)),
        ),
        ("conv1 fwd: whole layer", None, lambda: fl.conv_forward_fast(X, p["W1"], p["b1"], cp)),
        ("pool fwd", "pool", lambda: fl.max_pool_forward_fast(a, pp)),
        ("relu1 fwd (on the pooled array)", "relu", lambda: L.relu_forward(pooled)),
        ("affine2 fwd (8192x100)", "affine", lambda: L.affine_forward(h1, p["W2"], p["b2"])),
        ("relu2 fwd", "relu", lambda: L.relu_forward(z)),
        ("affine3 fwd (100x10)", "affine", lambda: L.affine_forward(h2, p["W3"], p["b3"])),
        ("softmax loss", "softmax", lambda: L.softmax_loss(scores, y)),
        ("affine3 bwd", "affine", lambda: L.affine_backward(dscores, fc3)),
        ("relu2 bwd", "relu", lambda: L.relu_backward(dh2, z)),
        ("affine2 bwd", "affine", lambda: L.affine_backward(dz, fc2)),
        ("relu1 bwd", "relu", lambda: L.relu_backward(dh1, pooled)),
        ("pool bwd", "pool", lambda: fl.max_pool_backward_fast(dp, pool_cache)),
        (
            "conv1 bwd: dout to (F, N*P)",
            "copies",
            lambda: np.copyto(dflat.reshape(F, N, P), da.reshape(N, F, P).transpose(1, 0, 2)),
        ),
        ("conv1 bwd: GEMM dw and db", "GEMM", lambda: np.matmul(dflat, cols.reshape(K + 1, -1).T)),
        (
            "conv1 bwd: whole layer (no dx)",
            None,
            lambda: fl.conv_backward_fast(da, conv_cache.without_dx()),
        ),
        (
            "(not run: conv1 dx GEMM)",
            None,
            lambda: np.matmul(p["W1"].reshape(F, K).T, dflat, out=dcols),
        ),
        ("(not run: conv1 col2im)", None, col2im),
    ]
    for k in p:
        phases.append(
            (f"adam {k} {p[k].shape}", "adam", lambda k=k: adam(p[k], grads[k], dict(configs[k])))
        )
    phases.append(("whole step", None, full_step))

    def median_ms(fn):
        fn()
        times = []
        for _ in range(reps):
            t0 = clock()
            fn()
            times.append(clock() - t0)
        return 1e3 * statistics.median(times)

    rows, by_kind = [], {}
    for name, kind, fn in phases:
        ms = median_ms(fn)
        rows.append({"phase": name, "kind": kind, "ms": ms})
        if kind is not None:
            by_kind[kind] = by_kind.get(kind, 0.0) + ms
    step = rows[-1]["ms"]
    # the whole conv layers' Python and allocation overhead beyond im2col + GEMM
    fwd = next(r["ms"] for r in rows if r["phase"] == "conv1 fwd: whole layer")
    bwd = next(r["ms"] for r in rows if r["phase"] == "conv1 bwd: whole layer (no dx)")
    parts = sum(by_kind.values())
    conv_parts = by_kind.get("im2col", 0.0) + sum(
        r["ms"] for r in rows if r["phase"].startswith("conv1") and r["kind"] == "GEMM"
    )
    by_kind["glue"] = step - parts
    return {
        "clock": "thread CPU time" if cpu else "wall clock",
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0")),
        "reps": reps,
        "rows": rows,
        "by_kind": by_kind,
        "step_ms": step,
        "conv_layers_ms": fwd + bwd,
        "conv_parts_ms": conv_parts,
    }


def profile_markdown(prof) -> str:
    lines = [
        "| phase | ms (median) | share of step |",
        "|---|---|---|",
    ]
    step = prof["step_ms"]
    for r in prof["rows"]:
        lines.append(f"| {r['phase']} | {r['ms']:.2f} | {100 * r['ms'] / step:.0f}% |")
    lines += ["", "| kind | ms | share |", "|---|---|---|"]
    for k, v in sorted(prof["by_kind"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k} | {v:.2f} | {100 * v / step:.0f}% |")
    lines += [
        "",
        "glue = the whole step minus every phase (the Python between the layers and the cache "
        "misses a phase run alone does not see); negative when the phases, timed alone, were "
        "slower than inside the step, i.e. when the load, not the code, set the times.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# results


def summarize(name, group, kind, samples):
    row = {"group": group, "case": name}
    for key in ("naive", "fast", "plain", "gemm", "torch"):
        s = samples.get(key)
        row[f"{key}_ms"] = statistics.median(s) * 1e3 if s else None
    for a, b in (("fast", "torch"), ("plain", "fast")):
        sa, sb = samples.get(a), samples.get(b)
        if sa and sb:
            ratios = [x / y for x, y in zip(sa, sb, strict=False)]
            row[f"{a}_over_{b}"] = statistics.median(ratios)
            row[f"{a}_over_{b}_min"] = min(ratios)
            row[f"{a}_over_{b}_max"] = max(ratios)
    if row["naive_ms"] is not None and row["fast_ms"]:
        row["naive_over_fast"] = row["naive_ms"] / row["fast_ms"]
    if row["gemm_ms"] is not None and row["fast_ms"]:
        row["gemm_share"] = row["gemm_ms"] / row["fast_ms"]
    row["target_fast_over_torch"] = TARGETS.get(kind)
    if row["target_fast_over_torch"] is not None and row.get("fast_over_torch") is not None:
        row["target_met"] = row["fast_over_torch"] <= row["target_fast_over_torch"]
    row["rounds"] = {k: len(v) for k, v in samples.items()}
    return row


def fmt_ms(v):
    return "-" if v is None else (f"{v:.3f}" if v < 1 else f"{v:.2f}")


def table_rows(rows):
    header = [
        "case",
        "naive ms",
        "fast ms",
        "plain ms (/fast)",
        "GEMM ms (share)",
        "torch ms",
        "fast/torch",
        "target",
        "naive/fast",
    ]
    out = []
    for r in rows:
        ratio = "-"
        if r.get("fast_over_torch") is not None:
            ratio = (
                f"{r['fast_over_torch']:.2f} ({r['fast_over_torch_min']:.2f}"
                f"-{r['fast_over_torch_max']:.2f})"
            )
        plain = fmt_ms(r.get("plain_ms"))
        if r.get("plain_over_fast") is not None:
            plain += (
                f" ({r['plain_over_fast']:.2f}, {r['plain_over_fast_min']:.2f}"
                f"-{r['plain_over_fast_max']:.2f})"
            )
        gemm = "-"
        if r.get("gemm_ms") is not None:
            gemm = f"{fmt_ms(r['gemm_ms'])} ({100 * r['gemm_share']:.0f}%)"
        target = r.get("target_fast_over_torch")
        if target is None:
            target_s = "-"
        else:
            met = r.get("target_met")
            target_s = f"<= {target}" + ("" if met is None else (" met" if met else " NOT met"))
        out.append(
            [
                r["case"],
                fmt_ms(r.get("naive_ms")),
                fmt_ms(r.get("fast_ms")),
                plain,
                gemm,
                fmt_ms(r.get("torch_ms")),
                ratio,
                target_s,
                "-" if r.get("naive_over_fast") is None else f"{r['naive_over_fast']:.1f}",
            ]
        )
    return header, out


def print_table(header, rows, title):
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title)
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if i == 0 else "right")
        for r in rows:
            t.add_row(*r)
        Console(width=200).print(t)
    except ImportError:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
        print(title)
        for r in [header, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


def markdown(header, rows, info, notes):
    lines = ["# mlcore fast layers benchmark", ""]
    for k, v in info.items():
        if k != "workers":
            lines.append(f"- {k}: {v}")
    for kind, w in info.get("workers", {}).items():
        pools = w.get("threadpools")
        desc = {k: v for k, v in w.items() if k != "threadpools"}
        what = " (mlcore imported plainly)" if kind == "plain" else ""
        lines.append(f"- {kind} worker{what}: {desc}")
        if isinstance(pools, list):
            for d in pools:
                arch = f", {d['architecture']} kernels" if d.get("architecture") else ""
                lines.append(
                    f"  - threadpool: {d['internal_api']} {d['version']} ({d['lib']}), "
                    f"{d['num_threads']} threads{arch}"
                )
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def machine_info(threads):
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "threads_per_engine": threads,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------------------------
# memory (child process with the mlcore worker's settings, no torch)


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it is not inherited from
    the parent across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_child(steps):
    import tracemalloc

    import numpy as np

    rss0 = peak_rss_bytes()
    tracemalloc.start()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((49_000, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, 49_000)
    data_bytes = X.nbytes + y.nbytes
    from mlcore.nn.cnn import ThreeLayerConvNet
    from mlcore.nn.optim import adam

    model = ThreeLayerConvNet(dtype=np.float32, weight_scale=1e-2, seed=0)
    configs = {k: {"learning_rate": 1e-3} for k in model.params}
    order = rng.permutation(len(X))
    n_steps = len(X) // 50 if steps is None else steps
    t0 = time.perf_counter()
    for i in range(n_steps):
        idx = order[i * 50 : (i + 1) * 50]
        loss, grads = model.loss(X[idx], y[idx])
        for k, g in grads.items():
            model.params[k], configs[k] = adam(model.params[k], g, configs[k])
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    rss = peak_rss_bytes()
    print(
        json.dumps(
            {
                "steps": n_steps,
                "seconds": elapsed,
                "dataset_bytes": data_bytes,
                "tracemalloc_peak_bytes": peak,
                "maxrss_growth_bytes": rss - rss0,
                "peak_over_dataset": peak / data_bytes,
                "final_loss": float(loss),
            }
        )
    )


def measure_memory(threads, steps):
    env = child_env(ROOT)
    cmd = [sys.executable, __file__, "--memory-child", "--threads", str(threads)]
    if steps is not None:
        cmd += ["--memory-steps", str(steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_profile(threads, reps):
    env = child_env(ROOT)
    cmd = [sys.executable, __file__, "--profile-child", "--threads", str(threads)]
    cmd += ["--profile-reps", str(reps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------


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

    info["idle_wait_ms"] = {
        kind: {
            "median": 1e3 * statistics.median(w),
            "max": 1e3 * max(w),
            "timeouts": sum(x >= IDLE_TIMEOUT for x in w),
        }
        for kind, v in idle_waits.items()
        if (w := [x for x in v if x is not None])
    }
    unknown = sum(x is None for v in idle_waits.values() for x in v)
    timeouts = sum(d["timeouts"] for d in info["idle_wait_ms"].values())
    if unknown or timeouts:
        notes.append(
            f"WARNING: {unknown} hand-overs could not see the workers' threads (no /proc) and "
            f"{timeouts} gave up after {IDLE_TIMEOUT:.0f} s with threads still running: those "
            "samples may share the cores with the previous worker's threads."
        )
    info["loadavg_at_start"] = load_start
    info["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    notes.append(
        "float32 unless stated; every engine in its own process (mlcore: OMP_WAIT_POLICY="
        "passive, OPENBLAS_THREAD_TIMEOUT=20 and OMP/OPENBLAS threads pinned; plain: mlcore "
        "imported plainly, nothing set, plain/fast = median of the per-round ratios (min-max); "
        "torch: only torch.set_num_threads; none inherits "
        f"{' or '.join(MACHINE_PINS)}, each runs the OpenBLAS kernel its CPU gets); rounds "
        "alternate between the processes, and each hand-over waits until no thread of the "
        "previous worker runs (OpenBLAS spins ~0.1 s after a GEMM) plus "
        f"{1e3 * gap:.0f} ms; ms = median over rounds; fast/torch = median of the "
        "per-round ratios (min-max); GEMM = the np.matmul calls of the fast conv alone on its "
        "own column matrix (forward: one GEMM over all images; backward: the [dw|db] and the "
        "column gradient GEMMs)."
    )
    notes.append(
        "torch step: Conv2d/ReLU/MaxPool2d/Linear/ReLU/Linear + CrossEntropyLoss + Adam; "
        "mlcore step: mlcore.nn.cnn.ThreeLayerConvNet.loss + mlcore.nn.optim.adam per "
        "parameter. Neither computes the input gradient of the first conv."
    )
    result = {"machine": info, "rows": rows, "notes": notes, "rounds": rounds}
    if args.memory:
        mem = measure_memory(args.threads, 40 if args.quick else None)
        result["memory"] = mem
        notes.append(
            f"memory: {mem['steps']} steps of batch 50 over a 49000x3x32x32 float32 array "
            f"({mem['dataset_bytes'] / 2**20:.0f} MiB with labels): tracemalloc peak "
            f"{mem['tracemalloc_peak_bytes'] / 2**20:.0f} MiB = "
            f"{100 * mem['peak_over_dataset']:.1f}% of the dataset; peak RSS grew by "
            f"{mem['maxrss_growth_bytes'] / 2**20:.0f} MiB ({mem['seconds']:.1f} s)."
        )
    header, trows = table_rows(rows)
    title = (
        f"mlcore fast layers vs naive vs PyTorch CPU, separate processes "
        f"({args.threads} threads each, {rounds} rounds)"
    )
    print_table(header, trows, title)
    for n in notes:
        print("note:", n)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "layers.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "layers.md").write_text(markdown(header, trows, info, notes))
    print(f"wrote {args.out / 'layers.json'} and {args.out / 'layers.md'}")
    if args.profile:
        # one thread, CPU time: where the work goes, whatever else the machine runs; and the
        # engine's thread count, wall clock
        profs = [run_profile(t, 5 if args.quick else 30) for t in sorted({1, args.threads})]
        (args.out / "profile.json").write_text(json.dumps(profs, indent=2) + "\n")
        text = "\n".join(
            f"### {p['threads']} thread(s), {p['clock']}, median of {p['reps']}\n\n"
            + profile_markdown(p)
            for p in profs
        )
        (args.out / "profile.md").write_text(text)
        print(text)
        print(f"wrote {args.out / 'profile.json'} and {args.out / 'profile.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
