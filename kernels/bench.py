"""Microbenchmarks of the fused kernels against unfused PyTorch (and faiss for CPU top-K).

``run_benchmarks(ops, device, quick)`` returns one dict per (op, case, mode, provider) and
``print_table(rows)`` renders them with rich. Measured, per row:

* ``median_ms``: median wall time; ``triton.testing.do_bench`` (CUDA, median of its
  repetitions) or ``time.perf_counter`` medians after a warm-up (CPU);
* ``peak_mib``: extra memory of one call above the inputs. CUDA: ``max_memory_allocated``
  minus the memory allocated before the call. CPU: the rise of the peak resident set size
  (``VmHWM``, reset through ``/proc/self/clear_refs``) of a fresh subprocess during one call
  made after a small warm-up call (``mem_method`` says which); CPU figures include allocator
  and library buffers and count pages touched, not bytes requested;
* ``gbps`` / ``tflops``: the *floor* traffic and work divided by the time: bytes that must be
  read or written at least once (inputs read once, outputs written once) and ``2·B·N·d`` FLOPs
  per score matrix (forward 1×, backward 2×); recomputation is not counted;
* ``speedup``: the time of the ``torch`` (unfused) provider of the same case and mode divided
  by this row's time (> 1 = faster than unfused PyTorch).

Providers: ``diffrec`` (the op with ``backend=None``: Triton on CUDA, the PyTorch twin on
CPU), ``diffrec-screen`` and ``diffrec-noscreen`` (CPU top-K twin with the exact bf16 screen
forced on or off), ``diffrec-chunked`` (CPU top-K twin without faiss), ``torch`` (unfused
PyTorch) and ``faiss`` (CPU top-K: ``IndexFlatIP`` with BLAS forced).

On CUDA the Triton kernels autotune on their first call for a shape family; that call is
do_bench's untimed first call. ``target_summary`` turns the rows into one ``TARGET`` line per
headline target (op, size, time, achieved vs target); ``--summarize ROWS.json`` prints them
for saved rows.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from diffrec.kernels.bench_cases import (
    _DTYPE,
    OPS,
    _backend_label,
    _cases,
    _floors,
    _given_cases,
    _inputs,
    _mode_fn,
    _modes,
    _providers,
)
from diffrec.kernels.bench_report import device_peak_gbps, print_table, rows_to_markdown, target_summary


# --------------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_cpu_interleaved(fns: dict[str, tuple[Callable[[], object], list]], quick: bool) -> dict[str, float]:
    """Median milliseconds per provider; one repetition of every provider per round.

    Interleaving makes the ratios robust to load that comes and goes on a shared machine.
    Rounds: at least 3, then until about 1 s (quick: 0.3 s) of the slowest provider, at most 15.
    """
    for fn, _ in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    budget = 0.3 if quick else 1.0
    while True:
        for name, (fn, leaves) in fns.items():
            for leaf in leaves:
                leaf.grad = None
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        rounds = len(next(iter(times.values())))
        slowest = max(sum(t) for t in times.values())
        if rounds >= 15 or (rounds >= 3 and slowest >= budget):
            break
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def _time_cuda(fn: Callable[[], object], leaves: list, quick: bool) -> float:
    import triton.testing

    return float(
        triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=40 if quick else 100,
                                grad_to_none=leaves or None, return_mode="median")
    )


def _peak_cuda(fn: Callable[[], object], leaves: list) -> float:
    for leaf in leaves:
        leaf.grad = None
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _measure_rss_in_this_process(spec: dict) -> float:
    """Subprocess side of the CPU memory measurement: MiB of peak-RSS rise during one call."""
    op, provider, mode, case = spec["op"], spec["provider"], spec["mode"], spec["case"]
    small = dict(case, B=min(case["B"], 8))  # same op at a tiny size initialises the libraries
    for key, limit in (("L", 8), ("N", 512)):
        if key in small:
            small[key] = min(small[key], limit)
    warm_fn, _ = _mode_fn(op, provider, mode, _inputs(op, small, "cpu"), small)
    warm_fn()
    inp = _inputs(op, case, "cpu")
    fn, _ = _mode_fn(op, provider, mode, inp, case)
    gc.collect()
    before = _reset_peak_rss()
    fn()
    return (_proc_status_kib("VmHWM") - before) / 1024


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the resident-set high-water mark (Linux >= 4.0) and return the current RSS in KiB.

    ``ru_maxrss`` cannot be used: a child started by fork+exec inherits its parent's maximum.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return _proc_status_kib("VmHWM")  # cannot reset: measure the rise above the old peak
    return _proc_status_kib("VmRSS")


def _peak_cpu_subprocess(op: str, provider: str, mode: str, case: dict) -> float | None:
    spec = json.dumps(dict(op=op, provider=provider, mode=mode, case=case))
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "diffrec.kernels.bench", "--measure-rss", spec],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    if proc.returncode != 0:
        return None
    return float(proc.stdout.strip().splitlines()[-1])


def _shape(text: str) -> tuple[int, int, int]:
    try:
        b, n, d = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape takes B,N,d (three integers), got {text!r}") from None
    if min(b, n, d) < 1:
        raise argparse.ArgumentTypeError(f"--shape sizes must be positive, got {text!r}")
    return b, n, d


def run_benchmarks(
    ops: list[str], device: str, quick: bool, shapes: list[tuple[int, int, int]] | None = None, providers: list[str] | None = None
) -> list[dict]:
    """Benchmark ``ops`` (names from :data:`OPS`) on ``device`` ("cpu" or "cuda[:i]").

    ``quick`` runs one or two representative sizes per op with fewer repetitions; ``shapes``
    replaces the sizes (``(B, N, d)``, or ``(B, L, d)`` for noise injection); ``providers`` keeps only
    those (default: all of the op's). Returns one dict per
    (op, case, mode, provider) with the fields described in the module docstring.
    """
    device = str(torch.device(device))
    gpu = device.startswith("cuda")
    if gpu and not torch.cuda.is_available():
        raise RuntimeError("run_benchmarks: device 'cuda' requested but CUDA is not available")
    rows: list[dict] = []
    for op in ops:
        for case in _cases(op, device, quick) if shapes is None else _given_cases(op, shapes):
            for mode in _modes(op):
                case_rows = [
                    dict(op=op, provider=provider, backend=_backend_label(op, provider, device, case), mode=mode,
                         **case, dtype=str(_DTYPE).removeprefix("torch."), device=device,
                         median_ms=None, peak_mib=None, mem_method=None, gbps=None, tflops=None,
                         speedup=None, note="")
                    for provider in _providers(op, device)
                    if providers is None or provider in providers
                ]
                if not case_rows:
                    continue
                if gpu:
                    _measure_cuda(op, case, mode, case_rows, quick)
                else:
                    _measure_cpu(op, case, mode, case_rows, quick)
                nbytes, flops = _floors(op, case, mode)
                base = next((r["median_ms"] for r in case_rows if r["provider"] == "torch"), None)
                for row in case_rows:
                    if row["median_ms"]:
                        row["gbps"] = nbytes / (row["median_ms"] * 1e-3) / 1e9
                        row["tflops"] = flops / (row["median_ms"] * 1e-3) / 1e12 if flops else None
                        if base:
                            row["speedup"] = base / row["median_ms"]
                rows.extend(case_rows)
    return rows


def _measure_cuda(op: str, case: dict, mode: str, case_rows: list[dict], quick: bool) -> None:
    """One provider at a time (each with fresh inputs), so that out-of-memory stays local."""
    for row in case_rows:
        inp = fn = leaves = None
        try:
            inp = _inputs(op, case, row["device"])
            fn, leaves = _mode_fn(op, row["provider"], mode, inp, case)
            row["median_ms"] = _time_cuda(fn, leaves, quick)
            row["peak_mib"] = _peak_cuda(fn, leaves)
            row["mem_method"] = "cuda max_memory_allocated"
        except torch.cuda.OutOfMemoryError:
            row["note"] = "out of memory"
        finally:
            inp = fn = leaves = None
            gc.collect()
            torch.cuda.empty_cache()


def _measure_cpu(op: str, case: dict, mode: str, case_rows: list[dict], quick: bool) -> None:
    """Shared inputs, interleaved timing, then one memory subprocess per provider."""
    inp = _inputs(op, case, "cpu")
    fns = {row["provider"]: _mode_fn(op, row["provider"], mode, inp, case) for row in case_rows}
    medians = _time_cpu_interleaved(fns, quick)
    fns = inp = None
    gc.collect()
    for row in case_rows:
        row["median_ms"] = medians[row["provider"]]
        row["peak_mib"] = _peak_cpu_subprocess(op, row["provider"], mode, case)
        row["mem_method"] = "peak RSS rise of one call in a subprocess (VmHWM)"



def main(argv: list[str] | None = None) -> int:
    """``python -m diffrec.kernels.bench [--ops ...] [--device cpu|cuda] [--quick] [--shape B,N,d ...] [--json PATH] [--markdown PATH]``.

    ``--summarize ROWS.json`` prints only the target lines of saved rows (no benchmark runs).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shape", type=_shape, action="append", help="B,N,d (B,L,d for noise_inject) instead of the built-in sizes; repeatable")
    parser.add_argument("--providers", type=lambda text: text.split(","), help="only these providers, comma-separated (e.g. diffrec,faiss,torch)")
    parser.add_argument("--json", help="also write the rows as JSON to this path")
    parser.add_argument("--markdown", help="also write the rows as a Markdown table to this path")
    parser.add_argument("--peak-gbps", type=float,
                        help="the device's peak memory bandwidth, for the summary (default on CUDA: the driver's figure)")
    parser.add_argument("--summarize", metavar="ROWS_JSON", help="print the target lines of rows saved with --json and exit")
    parser.add_argument("--measure-rss", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_rss:
        print(f"{_measure_rss_in_this_process(json.loads(args.measure_rss)):.3f}")
        return 0
    if args.summarize:
        with open(args.summarize, encoding="utf-8") as fh:
            rows = json.load(fh)
        peak = args.peak_gbps or (rows and rows[0].get("peak_gbps"))
        for line in target_summary(rows, peak):
            print(line)
        return 0
    known = sorted({p for op in args.ops for p in _providers(op, args.device)})
    unknown = sorted(set(args.providers or []) - set(known))
    if unknown:
        parser.error(f"unknown provider(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    rows = run_benchmarks(args.ops, args.device, args.quick, args.shape, args.providers)
    peak = args.peak_gbps or device_peak_gbps(args.device)
    for row in rows:
        row["peak_gbps"] = peak
    print_table(rows)
    if peak and not args.peak_gbps:
        print(f"peak memory bandwidth {peak:.0f} GB/s as reported by the driver (override with --peak-gbps)")
    for line in target_summary(rows, peak):
        print(line)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write(rows_to_markdown(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
