"""Benchmark mlcore's fast conv / pool layers against the naive layers and PyTorch (CPU).

    python bench/layers.py [--threads 2] [--rounds 25] [--quick] [--memory] [--no-naive]

Everything runs in one process with every engine pinned to the same number of threads
(OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS are set before numpy is imported,
torch.set_num_threads, and threadpoolctl reports what the libraries actually use). Each case
is warmed up, then timed round by round with the engines interleaved (their order rotating
every round); a sample is the mean of enough back-to-back calls to last ~15 ms. Reported:
medians over rounds, and per-round ratios fast/torch as median (min-max). The table is printed
(with rich if available) and written to bench/results/layers.json and layers.md together
with the machine description.

``--memory`` additionally runs one epoch of ThreeLayerConvNet training steps (batch 50) over
a 49,000 x 3 x 32 x 32 float32 array in a child process without torch, and reports the peak
memory (tracemalloc peak and maxrss growth) against the dataset size.
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 25, quick 3)")
    p.add_argument("--quick", action="store_true", help="few rounds and short samples (smoke test)")
    p.add_argument("--no-naive", action="store_true", help="skip the naive layers")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    p.add_argument("--memory", action="store_true", help="also measure an epoch's peak memory")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory-steps", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--wait-policy",
        default="passive",
        help="OMP_WAIT_POLICY for every engine (default passive, mlcore's default); "
        "'env' keeps the environment's",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for layers.json/.md")
    return p.parse_args(argv)


def pin_threads(n: int, wait_policy: str) -> None:
    """Must run before numpy (or torch) is imported."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if wait_policy != "env":
        os.environ["OMP_WAIT_POLICY"] = wait_policy


# --------------------------------------------------------------------------------------------
# timing


class Engine:
    def __init__(self, name, fn, max_rounds=None):
        self.name, self.fn, self.max_rounds = name, fn, max_rounds
        self.reps = 1
        self.samples: list[float] = []


def calibrate(engine: Engine, target: float) -> bool:
    """Warm up; choose how many calls make one sample. False if one call is too slow."""
    t0 = time.perf_counter()
    engine.fn()
    first = time.perf_counter() - t0
    if engine.max_rounds is not None and first > 20.0:
        return False
    engine.fn()
    t0 = time.perf_counter()
    engine.fn()
    one = max(time.perf_counter() - t0, 1e-7)
    engine.reps = max(1, int(target / one))
    return True


def sample(engine: Engine) -> float:
    fn, reps = engine.fn, engine.reps
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def run_case(engines: list[Engine], rounds: int, target: float) -> None:
    engines = [e for e in engines if calibrate(e, target)]
    for r in range(rounds):
        order = engines[r % len(engines) :] + engines[: r % len(engines)]
        for e in order:
            if e.max_rounds is None or len(e.samples) < e.max_rounds:
                e.samples.append(sample(e))


# --------------------------------------------------------------------------------------------
# cases


def conv_cases(np, fl, L, torch, dtype, with_naive):
    from mlcore.nn import fast_layers

    specs = [
        ("conv 3x3 s2 p1, x(100,3,31,31) w(25,3,3,3)", (100, 3, 31, 31), (25, 3, 3, 3), 2, 1),
        ("conv 7x7 s1 p3, x(50,3,32,32) w(32,3,7,7)", (50, 3, 32, 32), (32, 3, 7, 7), 1, 3),
    ]
    rng = np.random.default_rng(0)
    cases = []
    for label, xs, ws, stride, pad in specs:
        x = rng.standard_normal(xs).astype(dtype)
        w = (0.1 * rng.standard_normal(ws)).astype(dtype)
        b = rng.standard_normal(ws[0]).astype(dtype)
        cp = {"stride": stride, "pad": pad}
        out, cache = fl.conv_forward_fast(x, w, b, cp)
        dout = rng.standard_normal(out.shape).astype(dtype)
        N, C, H, W = xs
        F, _, HH, WW = ws
        K, P = C * HH * WW, out.shape[2] * out.shape[3]
        cols = cache.cols  # (K + 1, N, P): receptive fields, then a row of ones
        wb = np.concatenate([w.reshape(F, K), b[:, None]], axis=1)
        w2t = w.reshape(F, K).T
        res = np.empty((N, F, P), dtype)
        dcols = np.empty((K, N * P), dtype)
        dflat = np.ascontiguousarray(dout.reshape(N, F, P).transpose(1, 0, 2)).reshape(F, N * P)

        def gemm_fwd(wb=wb, cols=cols, res=res):
            np.matmul(wb, cols.transpose(1, 0, 2), out=res)

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

        naive = {}
        if with_naive:
            x64, w64, b64, d64 = (a.astype(np.float64) for a in (x, w, b, dout))
            ncache = L.conv_forward_naive(x64, w64, b64, cp)[1]
            naive = {
                "fwd": lambda x=x, w=w, b=b, cp=cp: L.conv_forward_naive(x, w, b, cp),
                "bwd": lambda d=dout, c=ncache: L.conv_backward_naive(d, c),
                "fwd+bwd": lambda x=x, w=w, b=b, cp=cp, d=dout: L.conv_backward_naive(
                    d, L.conv_forward_naive(x, w, b, cp)[1]
                ),
            }
        tor = {}
        if torch is not None:
            F_ = torch.nn.functional
            xt = torch.from_numpy(x).requires_grad_()
            wt = torch.from_numpy(w).requires_grad_()
            bt = torch.from_numpy(b).requires_grad_()
            dt_ = torch.from_numpy(dout)
            graph = F_.conv2d(xt, wt, bt, stride=stride, padding=pad)

            def t_fwd(xt=xt, wt=wt, bt=bt, s=stride, p=pad, F_=F_):
                with torch.no_grad():
                    F_.conv2d(xt, wt, bt, stride=s, padding=p)

            def t_bwd(graph=graph, dt_=dt_, ts=(xt, wt, bt)):
                for t in ts:
                    t.grad = None
                graph.backward(dt_, retain_graph=True)

            def t_fb(xt=xt, wt=wt, bt=bt, s=stride, p=pad, dt_=dt_, F_=F_):
                for t in (xt, wt, bt):
                    t.grad = None
                F_.conv2d(xt, wt, bt, stride=s, padding=p).backward(dt_)

            tor = {"fwd": t_fwd, "bwd": t_bwd, "fwd+bwd": t_fb}
        for what, fast, gemm in (
            ("fwd", fast_fwd, gemm_fwd),
            ("bwd", fast_bwd, gemm_bwd),
            ("fwd+bwd", fast_fb, gemm_fb),
        ):
            cases.append(
                {
                    "group": "conv",
                    "case": f"{label} {what}",
                    "fast": fast,
                    "gemm": gemm,
                    "naive": naive.get(what),
                    "torch": tor.get(what),
                    "target": 1.3 if what == "fwd+bwd" else None,
                }
            )
    del fast_layers
    return cases


def pool_cases(np, fl, L, torch, dtype, with_naive):
    specs = [
        ("pool 2x2 s2, x(100,3,32,32)", (100, 3, 32, 32), 2, 2),
        ("pool 3x3 s2, x(100,3,32,32)", (100, 3, 32, 32), 3, 2),
        ("pool 2x2 s2, x(50,32,32,32)", (50, 32, 32, 32), 2, 2),
        ("pool 3x3 s2, x(50,32,32,32)", (50, 32, 32, 32), 3, 2),
    ]
    rng = np.random.default_rng(1)
    cases = []
    for label, xs, k, s in specs:
        x = rng.standard_normal(xs).astype(dtype)
        pp = {"pool_height": k, "pool_width": k, "stride": s}
        out, cache = fl.max_pool_forward_fast(x, pp)
        dout = rng.standard_normal(out.shape).astype(dtype)
        fast = {
            "fwd": lambda x=x, pp=pp: fl.max_pool_forward_fast(x, pp),
            "bwd": lambda d=dout, c=cache: fl.max_pool_backward_fast(d, c),
            "fwd+bwd": lambda x=x, pp=pp, d=dout: fl.max_pool_backward_fast(
                d, fl.max_pool_forward_fast(x, pp)[1]
            ),
        }
        naive = {}
        if with_naive:
            ncache = L.max_pool_forward_naive(x, pp)[1]
            naive = {
                "fwd": lambda x=x, pp=pp: L.max_pool_forward_naive(x, pp),
                "bwd": lambda d=dout, c=ncache: L.max_pool_backward_naive(d, c),
                "fwd+bwd": lambda x=x, pp=pp, d=dout: L.max_pool_backward_naive(
                    d, L.max_pool_forward_naive(x, pp)[1]
                ),
            }
        tor = {}
        if torch is not None:
            F_ = torch.nn.functional
            xt = torch.from_numpy(x).requires_grad_()
            dt_ = torch.from_numpy(dout)
            graph = F_.max_pool2d(xt, k, s)

            def t_fwd(xt=xt, k=k, s=s, F_=F_):
                with torch.no_grad():
                    F_.max_pool2d(xt, k, s)

            def t_bwd(graph=graph, dt_=dt_, xt=xt):
                xt.grad = None
                graph.backward(dt_, retain_graph=True)

            def t_fb(xt=xt, k=k, s=s, dt_=dt_, F_=F_):
                xt.grad = None
                F_.max_pool2d(xt, k, s).backward(dt_)

            tor = {"fwd": t_fwd, "bwd": t_bwd, "fwd+bwd": t_fb}
        for what in ("fwd", "bwd", "fwd+bwd"):
            cases.append(
                {
                    "group": "pool",
                    "case": f"{label} {what}",
                    "fast": fast[what],
                    "gemm": None,
                    "naive": naive.get(what),
                    "torch": tor.get(what),
                    "target": 2.0 if what == "fwd+bwd" else None,
                }
            )
    return cases


def make_mlcore_step(np, dtype, N=50, seed=0):
    """One ThreeLayerConvNet training step (loss + grads + adam on every parameter), the
    conv / pool layers of mlcore.nn.layer_utils pointed at the fast layers."""
    from mlcore.nn import fast_layers as fl
    from mlcore.nn import layer_utils
    from mlcore.nn.cnn import ThreeLayerConvNet
    from mlcore.nn.optim import adam

    layer_utils.conv_forward = fl.conv_forward_fast
    layer_utils.conv_backward = fl.conv_backward_fast
    layer_utils.max_pool_forward = fl.max_pool_forward_fast
    layer_utils.max_pool_backward = fl.max_pool_backward_fast
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


def step_cases(np, torch):
    cases = []
    for dtype, name in ((np.float32, "float32"), (np.float64, "float64")):
        cases.append(
            {
                "group": "step",
                "case": f"ThreeLayerConvNet train step, batch 50, {name}",
                "fast": make_mlcore_step(np, dtype),
                "gemm": None,
                "naive": None,
                "torch": make_torch_step(torch, np, dtype) if torch is not None else None,
                "target": 1.5 if dtype == np.float32 else None,
            }
        )
    return cases


# --------------------------------------------------------------------------------------------
# machine, output


def machine_info(np, torch, threads):
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "threads": threads,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "env": {
            k: v
            for k, v in sorted(os.environ.items())
            if k.startswith(("OMP_", "OPENBLAS", "MKL_", "GOMP_"))
        },
        "torch": getattr(torch, "__version__", None),
        "loadavg_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        from mlcore.nn import _fast

        info["mlcore_kernel_threads"] = _fast.get_num_threads()
    except ImportError:
        info["mlcore_kernel_threads"] = None
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001 - best effort description
        info["numpy_blas"] = None
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            {k: d.get(k) for k in ("user_api", "internal_api", "version", "num_threads")}
            | {"lib": Path(d.get("filepath", "")).name}
            for d in threadpool_info()
        ]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
    return info


def summarize(case):
    med = {}
    for key in ("naive", "fast", "gemm", "torch"):
        e = case.get("_" + key)
        med[key] = statistics.median(e.samples) * 1e3 if e is not None and e.samples else None
    row = {"group": case["group"], "case": case["case"]}
    row.update({f"{k}_ms": v for k, v in med.items()})
    fast_e, torch_e = case.get("_fast"), case.get("_torch")
    if fast_e is not None and torch_e is not None and torch_e.samples:
        ratios = [f / t for f, t in zip(fast_e.samples, torch_e.samples, strict=False)]
        row["fast_over_torch"] = statistics.median(ratios)
        row["fast_over_torch_min"] = min(ratios)
        row["fast_over_torch_max"] = max(ratios)
    if med["naive"] is not None and med["fast"]:
        row["naive_over_fast"] = med["naive"] / med["fast"]
    if med["gemm"] is not None and med["fast"]:
        row["gemm_share"] = med["gemm"] / med["fast"]
    row["target_fast_over_torch"] = case.get("target")
    row["rounds"] = {
        k: len(case["_" + k].samples)
        for k in ("naive", "fast", "gemm", "torch")
        if case.get("_" + k) is not None
    }
    return row


def fmt_ms(v):
    return "-" if v is None else (f"{v:.3f}" if v < 1 else f"{v:.2f}")


def table_rows(rows):
    header = [
        "case",
        "naive ms",
        "fast ms",
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
        gemm = "-"
        if r.get("gemm_ms") is not None:
            gemm = f"{fmt_ms(r['gemm_ms'])} ({100 * r['gemm_share']:.0f}%)"
        target = r.get("target_fast_over_torch")
        out.append(
            [
                r["case"],
                fmt_ms(r.get("naive_ms")),
                fmt_ms(r.get("fast_ms")),
                gemm,
                fmt_ms(r.get("torch_ms")),
                ratio,
                "-" if target is None else f"<= {target}",
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
    lines += [f"- {k}: {v}" for k, v in info.items() if k != "threadpools"]
    if isinstance(info.get("threadpools"), list):
        for d in info["threadpools"]:
            lines.append(
                f"- threadpool: {d['internal_api']} {d['version']} ({d['lib']}), "
                f"{d['num_threads']} threads"
            )
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# memory (child process, no torch)


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
    from mlcore.nn import fast_layers as fl
    from mlcore.nn import layer_utils
    from mlcore.nn.cnn import ThreeLayerConvNet
    from mlcore.nn.optim import adam

    layer_utils.conv_forward = fl.conv_forward_fast
    layer_utils.conv_backward = fl.conv_backward_fast
    layer_utils.max_pool_forward = fl.max_pool_forward_fast
    layer_utils.max_pool_backward = fl.max_pool_backward_fast
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
    env = {**os.environ}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, "--memory-child", "--threads", str(threads)]
    if steps is not None:
        cmd += ["--memory-steps", str(steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    pin_threads(args.threads, args.wait_policy)
    sys.path.insert(0, str(ROOT))
    if args.memory_child:
        memory_child(args.memory_steps)
        return 0

    import numpy as np

    torch = None
    notes = []
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:
            notes.append("PyTorch is not installed: the torch column is skipped.")
    from mlcore.nn import fast_layers as fl
    from mlcore.nn import layers as L

    if not fl.extension_active():
        notes.append("the Cython extension is not active: 'fast' is the numpy fallback.")
    rounds = args.rounds or (3 if args.quick else 25)
    target = 0.003 if args.quick else 0.015
    naive_rounds = 1 if args.quick else 3
    with_naive = not args.no_naive

    cases = []
    cases += conv_cases(np, fl, L, torch, np.float32, with_naive)
    cases += pool_cases(np, fl, L, torch, np.float32, with_naive)
    try:
        cases += step_cases(np, torch)
    except ImportError as exc:
        notes.append(f"ThreeLayerConvNet step skipped: {exc}")

    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = []
    for case in cases:
        engines = []
        for key in ("naive", "fast", "gemm", "torch"):
            fn = case.get(key)
            if fn is not None:
                e = Engine(key, fn, max_rounds=naive_rounds if key == "naive" else None)
                case["_" + key] = e
                engines.append(e)
        run_case(engines, rounds, target)
        rows.append(summarize(case))
        print(f"  {case['case']}: fast {fmt_ms(rows[-1]['fast_ms'])} ms", file=sys.stderr)

    info = machine_info(np, torch, args.threads)
    info = {**info, "loadavg_at_start": load_start}
    notes.append(
        "float32 for the layer rows; ratios are per round (engines interleaved), median "
        "(min-max); GEMM = the np.matmul calls of the fast conv alone on its own column "
        "matrix (forward: one batched matmul, a GEMM per image; backward: 2 GEMMs)."
    )
    notes.append(
        "torch step: Conv2d/ReLU/MaxPool2d/Linear/ReLU/Linear + CrossEntropyLoss + Adam; "
        "mlcore step: mlcore.nn.cnn.ThreeLayerConvNet.loss with layer_utils pointed at the "
        "fast layers + mlcore.nn.optim.adam per parameter. torch does not compute the input "
        "gradient of the first conv; the mlcore conv backward always returns dx."
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
    title = f"mlcore fast layers vs naive vs PyTorch CPU ({args.threads} threads, {rounds} rounds)"
    print_table(header, trows, title)
    for n in notes:
        print("note:", n)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "layers.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "layers.md").write_text(markdown(header, trows, info, notes))
    print(f"wrote {args.out / 'layers.json'} and {args.out / 'layers.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
