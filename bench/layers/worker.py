"""The worker protocol: one engine per process, driven over stdin / stdout (one JSON object
per line). ``run_worker`` is the worker's side; ``Worker`` the parent's handle on one, with the
wait until its threads are idle; ``run_case`` the rounds of one case across the workers."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.layers.engines import mlcore_engines, naive_engines, plain_engines, torch_engines
from bench.layers.processes import (
    MACHINE_PINS,
    ROOT,
    child_command,
    child_env,
    mlcore_settings,
)

WORKER_KINDS = ("mlcore", "plain", "torch", "naive")


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
        cmd = child_command("--worker", kind)
        cmd += ["--threads", str(args.threads)]
        if args.mlcore_path is not None:
            cmd += ["--mlcore-path", str(args.mlcore_path.resolve())]
        # absolute: the worker starts in ROOT (to find this package), wherever this one runs
        env = child_env((args.mlcore_path or ROOT).resolve())
        self.kind = kind
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
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
        None where /proc cannot tell. After a parallel loop PyTorch's OpenMP keeps its threads
        spinning for about 10 ms, after a product numpy's OpenBLAS (the
        naive layers) for about 0.1 s: a worker timed while another one's threads still spin
        shares the cores with them."""
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


def idle_wait_summary(idle_waits: dict[str, list[float | None]]) -> dict[str, dict]:
    """Per worker kind, of the hand-overs /proc could tell: the median and longest wait (ms)
    and how many gave up after IDLE_TIMEOUT."""
    return {
        kind: {
            "median": 1e3 * statistics.median(w),
            "max": 1e3 * max(w),
            "timeouts": sum(x >= IDLE_TIMEOUT for x in w),
        }
        for kind, v in idle_waits.items()
        if (w := [x for x in v if x is not None])
    }


def idle_wait_warning(idle_waits: dict[str, list[float | None]]) -> str | None:
    """The results' warning when a hand-over could not see the workers' threads or gave up
    waiting for them; None when every one saw them idle."""
    unknown = sum(x is None for v in idle_waits.values() for x in v)
    timeouts = sum(d["timeouts"] for d in idle_wait_summary(idle_waits).values())
    if not (unknown or timeouts):
        return None
    return (
        f"WARNING: {unknown} hand-overs could not see the workers' threads (no /proc) and "
        f"{timeouts} gave up after {IDLE_TIMEOUT:.0f} s with threads still running: those "
        "samples may share the cores with the previous worker's threads."
    )
