"""Rendering of kernel benchmark rows: a rich table, Markdown, and one ``TARGET`` line per headline target.

The rows are those of :func:`diffrec.kernels.bench.run_benchmarks`; this module only reads them.
"""

from __future__ import annotations

import sys

import torch


def _fmt(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _shape(row: dict) -> str:
    if row["op"] == "noise_inject":
        return f"B={row['B']} L={row['L']} d={row['d']}"
    extra = f" K={row['K']}" if "K" in row else ""
    return f"B={row['B']} N={row['N']:.0e} d={row['d']}{extra}".replace("e+0", "e")


def print_table(rows: list[dict], console=None) -> None:
    """Render benchmark rows as a rich table (one per op)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 200)
    for op in dict.fromkeys(r["op"] for r in rows):
        table = Table(title=f"{op} ({rows[0]['device']}, {rows[0]['dtype']})")
        for column in ("shape", "mode", "provider", "backend", "median ms", "peak MiB", "GB/s", "TFLOP/s",
                       "speedup vs torch", "note"):
            table.add_column(column, justify="right" if column not in ("shape", "provider", "backend") else "left")
        for r in (r for r in rows if r["op"] == op):
            table.add_row(_shape(r), r["mode"], r["provider"], r["backend"], _fmt(r["median_ms"], ".2f"),
                          _fmt(r["peak_mib"], ".1f"), _fmt(r["gbps"], ".1f"), _fmt(r["tflops"], ".3f"),
                          _fmt(r["speedup"], ".2f"), r["note"])
        console.print(table)
    methods = sorted({r["mem_method"] for r in rows if r["mem_method"]})
    if methods:
        console.print(f"peak memory: {', '.join(methods)}; GB/s and TFLOP/s use floor traffic/work (see bench.py)")


def rows_to_markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (for RESULTS files)."""
    header = "| op | shape | mode | provider | backend | median ms | peak MiB | GB/s | TFLOP/s | speedup vs torch |"
    lines = [header, "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['op']} | {_shape(r)} | {r['mode']} | {r['provider']} | {r['backend']} | "
            f"{_fmt(r['median_ms'], '.2f')} | {_fmt(r['peak_mib'], '.1f')} | {_fmt(r['gbps'], '.1f')} | "
            f"{_fmt(r['tflops'], '.3f')} | {_fmt(r['speedup'], '.2f')}{' ' + r['note'] if r['note'] else ''} |"
        )
    return "\n".join(lines)


def _verdict(value: float | None, target: float, at_least: bool) -> str:
    if value is None:
        return "n/a"
    return "met" if (value >= target if at_least else value <= target) else "MISSED"


def target_summary(rows: list[dict], peak_gbps: float | None = None) -> list[str]:
    """One line per headline target of the issue and benchmarked case, each starting with ``TARGET``:
    op, size, the time of the fused op (and of the reference), the achieved value, the target and
    ``met`` / ``MISSED`` / ``n/a`` (not measured, e.g. out of memory or no peak bandwidth known).

    GPU: top-K speedup vs ``torch.topk(q @ e.T)`` >= 3 (B=1024, N=1e6, d=128, K=20); noise
    injection fwd+bwd at >= 80% of the peak memory bandwidth and >= 2x the unfused version;
    linear cross-entropy (N=1e6) peak memory <= 0.1x and time <= 1x of ``F.cross_entropy(q @ e.T)``.
    CPU: top-K at least as fast as faiss (B=512, N=1e5, d=128, K=20); the bf16 screen >= 3x faiss
    where the CPU has AMX, at least as fast elsewhere (B=512, N=1e5 and 1e6).
    """
    def find(op, provider, mode, **case):
        for r in rows:
            if r["op"] == op and r["provider"] == provider and r["mode"] == mode and all(
                r.get(key) == val for key, val in case.items()
            ):
                return r
        return None

    def ratio(a, b, key):
        if a is None or b is None or a.get(key) is None or b.get(key) in (None, 0):
            return None
        return a[key] / b[key]

    def times(mine, ref, ref_name):
        note = f" [{ref_name}: {ref['note']}]" if ref and ref.get("note") else ""
        mine_note = f" [{mine['note']}]" if mine and mine.get("note") else ""
        mine_ms, ref_ms = _fmt(mine and mine["median_ms"], ".3f"), _fmt(ref and ref["median_ms"], ".3f")
        return f"{mine_ms} ms{mine_note} ({ref_name} {ref_ms} ms{note})"

    lines = []
    gpu = bool(rows) and rows[0]["device"].startswith("cuda")
    if gpu:
        case = dict(B=1024, N=1_000_000, d=128, K=20)
        mine, ref = find("inner_product_topk", "diffrec", "fwd", **case), find("inner_product_topk", "torch", "fwd", **case)
        speed = ratio(ref, mine, "median_ms")
        lines.append(
            f"TARGET inner_product_topk B=1024 N=1e6 d=128 K=20 fwd: {times(mine, ref, 'torch')}: "
            f"speedup {_fmt(speed, '.2f')}x vs target >= 3x -> {_verdict(speed, 3.0, True)}"
        )
        for r in rows:
            if r["op"] == "noise_inject" and r["provider"] == "diffrec" and r["mode"] == "full":
                ref = find("noise_inject", "torch", "full", B=r["B"], L=r["L"], d=r["d"])
                share = 100 * r["gbps"] / peak_gbps if peak_gbps and r["gbps"] else None
                peak = f"{peak_gbps:.0f} GB/s" if peak_gbps else "peak unknown"
                lines.append(
                    f"TARGET noise_inject {_shape(r)} fwd+bwd: {times(r, ref, 'unfused')}: "
                    f"{_fmt(r['gbps'], '.0f')} GB/s = {_fmt(share, '.0f')}% of {peak} vs target >= 80% "
                    f"-> {_verdict(share, 80.0, True)}"
                )
                speed = ratio(ref, r, "median_ms")
                lines.append(
                    f"TARGET noise_inject {_shape(r)} fwd+bwd: {times(r, ref, 'unfused')}: "
                    f"speedup {_fmt(speed, '.2f')}x vs target >= 2x -> {_verdict(speed, 2.0, True)}"
                )
        for r in rows:
            if r["op"] == "linear_cross_entropy" and r["provider"] == "diffrec" and r["mode"] == "full" \
                    and r["N"] == 1_000_000:
                ref = find("linear_cross_entropy", "torch", "full", B=r["B"], N=r["N"], d=r["d"])
                memory = ratio(r, ref, "peak_mib")
                lines.append(
                    f"TARGET linear_cross_entropy {_shape(r)} fwd+bwd: {times(r, ref, 'torch')}: "
                    f"peak memory {_fmt(r['peak_mib'], '.0f')} MiB = {_fmt(memory, '.3f')}x torch vs target <= 0.1x "
                    f"-> {_verdict(memory, 0.1, False)}"
                )
                slower = ratio(r, ref, "median_ms")
                lines.append(
                    f"TARGET linear_cross_entropy {_shape(r)} fwd+bwd: {times(r, ref, 'torch')}: "
                    f"time {_fmt(slower, '.2f')}x torch vs target <= 1x -> {_verdict(slower, 1.0, False)}"
                )
    else:
        case = dict(B=512, N=100_000, d=128, K=20)
        mine, ref = find("inner_product_topk", "diffrec", "fwd", **case), find("inner_product_topk", "faiss", "fwd", **case)
        if mine and ref:
            speed = ratio(ref, mine, "median_ms")
            lines.append(
                f"TARGET inner_product_topk (CPU) B=512 N=1e5 d=128 K=20 fwd: {times(mine, ref, 'faiss')}: "
                f"faiss time / diffrec time {_fmt(speed, '.2f')} vs target >= 1 -> {_verdict(speed, 1.0, True)}"
            )
        from diffrec.kernels.topk_screen import hardware_bf16

        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        for n in (100_000, 1_000_000):
            case = dict(B=512, N=n, d=128, K=20)
            mine, ref = find("inner_product_topk", "diffrec-screen", "fwd", **case), find("inner_product_topk", "faiss", "fwd", **case)
            if mine and ref:
                speed = ratio(ref, mine, "median_ms")
                want, where = (3.0, "AMX") if amx else (1.0, "bf16 dot products, no AMX: the screen is off by default" if hardware_bf16() else "no bf16 hardware: the screen is off by default")
                lines.append(
                    f"TARGET inner_product_topk bf16 screen (CPU, {where}) B=512 N=1e{len(str(n)) - 1} d=128 K=20 fwd: {times(mine, ref, 'faiss')}: "
                    f"faiss time / screen time {_fmt(speed, '.2f')} vs target >= {want:g} -> {_verdict(speed, want, True)}"
                )
    return lines


def device_peak_gbps(device: str) -> float | None:
    """The CUDA device's theoretical DRAM bandwidth as its driver reports it (memory clock × bus width), or None."""
    if not device.startswith("cuda"):
        return None
    try:
        import triton.testing

        return float(triton.testing.get_dram_gbps(torch.device(device).index or 0))
    except Exception:  # noqa: BLE001 - an old Triton or a driver without the attributes
        return None
