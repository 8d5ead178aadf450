"""The results: per-case figures from the samples, the table (printed and as markdown), the
machine's description, and the profile's tables."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
from pathlib import Path

from bench.layers.cases import TARGETS
from bench.layers.processes import MACHINE_PINS


def summarize(name, group, kind, samples):
    row = {"group": group, "case": name}
    for key in ("naive", "fast", "plain", "torch"):
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


def profile_markdown(prof) -> str:
    """One profile (``profile_step``'s answer) as markdown: every part, then the sums by
    kind."""
    lines = [
        "| part | kind | ms (median) | share of step |",
        "|---|---|---|---|",
    ]
    step = prof["step_ms"]
    for r in prof["rows"]:
        kind = r["kind"] or "-"
        lines.append(f"| {r['phase']} | {kind} | {r['ms']:.2f} | {100 * r['ms'] / step:.0f}% |")
    lines += ["", "| kind | ms | share |", "|---|---|---|"]
    for k, v in sorted(prof["by_kind"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k} | {v:.2f} | {100 * v / step:.0f}% |")
    lines += [
        "",
        "The parts with a kind are the calls the step makes, each timed alone on the inputs the "
        "step gives it; the rows in parentheses (kind -) are for reference and not summed: the "
        "conv kernels inside conv_forward_fast and conv_backward_fast, and the first conv's "
        "input gradient, which the step does not compute. matmul = mlcore.nn.linalg.matmul, "
        "the affine layers' products; bias = their + b and db sums. glue = the whole step "
        "minus every part (the Python between the layers, the layers' checks, and the cache "
        "misses a part run alone does not see); negative when the parts, timed alone, were "
        "slower than inside the step, i.e. when the load, not the code, set the times.",
    ]
    return "\n".join(lines) + "\n"


def openblas_kernel(workers: dict[str, dict]) -> str | None:
    """The OpenBLAS kernel numpy runs in the workers (``workers``: their ``info`` answers; what
    ``OPENBLAS_VERBOSE=2`` prints as ``Core:``), one name when they agree, else each with its
    workers; None when no worker could tell."""
    kinds: dict[str, list[str]] = {}
    for kind, w in workers.items():
        if arch := w.get("openblas_architecture"):
            kinds.setdefault(arch, []).append(kind)
    if len(kinds) <= 1:
        return next(iter(kinds), None)
    return ", ".join(f"{arch} ({'/'.join(k)})" for arch, k in sorted(kinds.items()))


def method_notes(gap: float, kernel: str | None) -> list[str]:
    """The notes on how the figures were taken; ``gap``: the pause after each hand-over (s);
    ``kernel``: the OpenBLAS kernel the workers run (``openblas_kernel``)."""
    kernel_s = "the kernel this CPU gets" + (f" ({kernel})" if kernel else "")
    return [
        "float32 unless stated; every engine in its own process (mlcore and naive: only "
        "OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS set to the thread count; "
        "plain: mlcore imported plainly, nothing set, plain/fast = median of the per-round "
        "ratios (min-max); torch: only torch.set_num_threads; none inherits "
        f"{' or '.join(MACHINE_PINS)}, so numpy's OpenBLAS runs {kernel_s}: the naive layers "
        "call it, mlcore's fast layers and step do not); rounds alternate between the "
        "processes, and each hand-over waits until no thread of the previous worker runs "
        "(PyTorch's OpenMP threads spin ~10 ms after a parallel loop, mlcore's pool sleeps, "
        f"OpenBLAS's ~0.1 s after a product) plus {1e3 * gap:.0f} ms; ms = median over "
        "rounds; fast/torch = median of the per-round ratios (min-max).",
        "fast conv: mlcore's implicit GEMM (conv_forward_fast / conv_backward_fast: no column "
        "matrix, no numpy BLAS). torch step: Conv2d/ReLU/MaxPool2d/Linear/ReLU/Linear + "
        "CrossEntropyLoss + Adam; mlcore step: mlcore.nn.cnn.ThreeLayerConvNet.loss + "
        "mlcore.nn.optim.adam per parameter. Neither computes the input gradient of the first "
        "conv.",
    ]


def memory_note(mem: dict) -> str:
    """The note on ``--memory``'s epoch (``mem``: the memory child's answer)."""
    return (
        f"memory: {mem['steps']} steps of batch 50 over a 49000x3x32x32 float32 array "
        f"({mem['dataset_bytes'] / 2**20:.0f} MiB with labels): tracemalloc peak "
        f"{mem['tracemalloc_peak_bytes'] / 2**20:.0f} MiB = "
        f"{100 * mem['peak_over_dataset']:.1f}% of the dataset; peak RSS grew by "
        f"{mem['maxrss_growth_bytes'] / 2**20:.0f} MiB ({mem['seconds']:.1f} s)."
    )


def write_results(out: Path, result: dict, header: list[str], rows: list[list[str]]) -> None:
    """Write ``result`` to out/layers.json and its table (``header``, ``rows``: table_rows) with
    the machine and the notes to out/layers.md."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "layers.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "layers.md").write_text(markdown(header, rows, result["machine"], result["notes"]))
    print(f"wrote {out / 'layers.json'} and {out / 'layers.md'}")


def write_profile(out: Path, profs: list[dict]) -> None:
    """Write the profiles (one per thread count) to out/profile.json and profile.md, and print
    their tables."""
    (out / "profile.json").write_text(json.dumps(profs, indent=2) + "\n")
    text = "\n".join(
        f"### {p['threads']} thread(s), {p['clock']}, median of {p['reps']}\n\n"
        + profile_markdown(p)
        for p in profs
    )
    (out / "profile.md").write_text(text)
    print(text)
    print(f"wrote {out / 'profile.json'} and {out / 'profile.md'}")
