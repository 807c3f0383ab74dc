"""The figures of ``diffrec analyze``: breakdowns by popularity and length, beyond accuracy, multiple samples."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np


def _bars(ax: Any, groups: list[str], runs: list[tuple[str, list[float]]], ylabel: str) -> None:
    width = 0.8 / max(1, len(runs))
    x = np.arange(len(groups))
    for i, (label, values) in enumerate(runs):
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def figures(analysis: dict[str, Any], out: pathlib.Path) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffrec.plots import _save

    runs = analysis["runs"]
    k = analysis["k"]
    metrics = (f"HR@{k}", f"NDCG@{k}")
    written = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    groups = ["head", "tail", *(f"Q{q}" for q in range(1, 6))]
    for ax, metric in zip(axes, metrics):
        rows = [(r["label"], [r["popularity"]["head"][metric], r["popularity"]["tail"][metric], *(q[metric] for q in r["popularity"]["quintiles"])]) for r in runs]
        _bars(ax, groups, rows, f"{metric} (%)")
        ax.set_xlabel("target popularity (head: top 20% of items; Q1 most popular)")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    written.append(_save(fig, out / "popularity.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    buckets = [b["lengths"] for b in runs[0]["length"]]
    for ax, metric in zip(axes, metrics):
        _bars(ax, buckets, [(r["label"], [b[metric] for b in r["length"]]) for r in runs], f"{metric} (%)")
        ax.set_xlabel("history length")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    written.append(_save(fig, out / "length.png"))

    names = (("coverage", f"coverage@{k} (%)"), ("novelty", "novelty (bits)"), ("gini", "Gini of exposure"), ("ild", "intra-list diversity"))
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6))
    for ax, (key, label) in zip(axes, names):
        ax.bar(range(len(runs)), [r["beyond"][key] for r in runs], color="#8fb3d9")
        ax.set_xticks(range(len(runs)), [r["label"] for r in runs], rotation=20, ha="right", fontsize="small")
        ax.set_ylabel(label)
    fig.tight_layout()
    written.append(_save(fig, out / "beyond.png"))

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for r in runs:
        for how, style in (("score", "-o"), ("rrf", "--s")):
            points = [p for p in r["samples"] if p["fusion"] == how]
            xs = [p["samples"] for p in points]
            for ax, key in zip(axes, (*metrics, "ild")):
                ax.plot(xs, [p[key] for p in points], style, label=f"{r['label']} ({how})")
    for ax, label in zip(axes, (f"{metrics[0]} (%)", f"{metrics[1]} (%)", "intra-list diversity")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("reverse samples per user (fused)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    written.append(_save(fig, out / "samples.png"))
    return written


def schedule_figure(num_steps: int, out: pathlib.Path) -> pathlib.Path:
    """abar_t of every registered schedule for T steps (the DiffuRec paper's Figure 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffrec.errors import DiffrecError
    from diffrec.plots import _save
    from diffrec.registry import load_builtin_parts, registry
    from diffrec.schedules import GaussianDiffusion

    load_builtin_parts()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in registry("schedule").names():
        try:
            diffusion = GaussianDiffusion(registry("schedule").build(name), num_steps)
        except DiffrecError as exc:
            ax.plot([], [], label=f"{name} (not defined for T = {num_steps}: {str(exc)[:40]})")
            continue
        ax.plot(np.arange(1, num_steps + 1), diffusion.alphas_cumprod, label=name)
    ax.set_xlabel("step t")
    ax.set_ylabel("abar_t")
    ax.set_title(f"cumulative signal of every schedule, T = {num_steps}")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)
