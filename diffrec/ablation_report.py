"""``ablation.md`` and the figures of an ablation (``diffrec.ablate``): tables, bars, lines, heat maps."""

from __future__ import annotations

import math
import pathlib
from typing import Any

from diffrec.errors import DiffrecError

SHOWN = ("HR@10", "NDCG@10")
#: the first line of every ``ablation.md``: how ``diffrec ablate`` recognises its own
MARK = "<!-- diffrec ablation -->"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _cell(entry: dict[str, Any], metric: str) -> str:
    stats = entry["test"][metric]
    return _fmt(stats["mean"]) if stats["std"] is None else f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def markdown(summary: dict[str, Any], alpha: float = 0.05) -> str:
    """The table of ``ablation.md``: per cell mean ± std, the difference to the reference,
    the paired t-test's p-value and its Holm correction, and a mark where that is below ``alpha``."""
    ref = summary.get("reference")
    header = ["cell", "seeds", *SHOWN, *(f"Δ {m}" for m in SHOWN), *(f"p {m} (Holm)" for m in SHOWN), ""]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in summary["cells"].items():
        if entry["status"] != "ok":
            why = entry.get("reason", "no finished run")
            lines.append(f"| {name} | 0 | {entry['status']}: {why[:120]} |" + " |" * (len(header) - 3))
            continue
        versus = entry.get("vs_reference")
        deltas = [_fmt(versus[m]["difference"]) if versus else ("reference" if name == ref else "") for m in SHOWN]
        ps = [f"{_fmt(versus[m]['p'], 3)} ({_fmt(versus[m]['p_holm'], 3)})" if versus and versus[m]["p"] is not None else "" for m in SHOWN]
        mark = "*" if versus and any((versus[m].get("p_holm") or 1.0) < alpha for m in SHOWN) else ""
        lines.append(f"| {name} | {len(entry['runs'])} | " + " | ".join([*(_cell(entry, m) for m in SHOWN), *deltas, *ps, mark]) + " |")
    note = f"\n\nTest split, percent, mean ± std over seeds. Δ and paired t-tests against `{ref}` over the seeds both ran; Holm-corrected over the cells per metric; * marks p (Holm) < {alpha}." if ref else "\n\nTest split, percent, mean ± std over seeds."
    pending = [
        (len(summary.get(key) or []), why)
        for key, why in (
            ("untrained", "not trained yet"),
            ("busy", "being trained by another process"),
            ("no_weights", "without weights here (a checkout keeps none), so their inference-only cells were not evaluated"),
        )
    ]
    note += "".join(f" {n} run{'s' if n > 1 else ''} {why}; the cells show the seeds that finished." for n, why in pending if n)
    return MARK + "\n\n" + "\n".join(lines) + note + "\n"


def _numeric(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def figures(summary: dict[str, Any], axes: list[tuple[str, list[str]]], out: pathlib.Path) -> list[pathlib.Path]:
    """Per metric a bar chart (error bars, a dot per seed); a line plot per numeric axis; a heat map for two axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffrec.plots import _save, readable_span

    done = {n: e for n, e in summary["cells"].items() if e["status"] == "ok"}
    if not done:
        raise DiffrecError("no cell has a finished run; nothing to plot")
    written = []
    for metric in SHOWN:
        names = list(done)
        fig, ax = plt.subplots(figsize=(7, 0.9 + 0.42 * len(names)))
        means = [done[n]["test"][metric]["mean"] for n in names]
        stds = [done[n]["test"][metric]["std"] or 0.0 for n in names]
        ax.barh(range(len(names)), means, xerr=stds, color="#8fb3d9", capsize=3)
        for row, name in enumerate(names):
            seeds = [r["test"][metric] for r in done[name]["runs"]]
            ax.plot(seeds, [row] * len(seeds), "o", color="#1f3b5c", markersize=4)
        ax.set_yticks(range(len(names)), names, fontsize="small")
        ax.set_xlabel(f"test {metric} (%)")
        fig.tight_layout()
        written.append(_save(fig, out / f"ablation_{metric.replace('@', '')}.png"))
    for i, (key, values) in enumerate(axes):
        xs = _numeric(values)
        if xs is None:
            continue
        others = [a for j, a in enumerate(axes) if j != i]
        fig, plots = plt.subplots(1, len(SHOWN), figsize=(5 * len(SHOWN), 3.8))
        for ax, metric in zip(plots, SHOWN):
            drawn: list[float] = []
            for combo in _combos(others):
                label = ", ".join(f"{k}={v}" for k, v in combo.items()) or "all"
                points = [(x, _entry(done, axes, {**combo, key: v})) for x, v in zip(xs, values)]
                points = [(x, e["test"][metric]) for x, e in points if e is not None]
                if points:
                    ax.errorbar([x for x, _ in points], [s["mean"] for _, s in points], yerr=[s["std"] or 0.0 for _, s in points], marker="o", capsize=3, label=label)
                    drawn += [s["mean"] + sign * (s["std"] or 0.0) for _, s in points for sign in (-1, 1)]
            if drawn:
                readable_span(ax, drawn)  # a flat curve stays flat on the page
            if min(xs) > 0 and max(xs) / min(xs) >= 10:
                ax.set_xscale("log")
            ax.set_xlabel(key)
            ax.set_ylabel(f"test {metric} (%)")
            ax.grid(alpha=0.3)
        plots[0].legend(fontsize="small")
        fig.tight_layout()
        written.append(_save(fig, out / f"ablation_{re_safe(key)}.png"))
    if len(axes) == 2:
        (k1, v1), (k2, v2) = axes
        fig, plots = plt.subplots(1, len(SHOWN), figsize=(4.5 * len(SHOWN) + 1, 0.8 + 0.6 * len(v1)))
        for ax, metric in zip(plots, SHOWN):
            grid = [[_mean(done, axes, {k1: a, k2: b}, metric) for b in v2] for a in v1]
            image = ax.imshow([[math.nan if g is None else g for g in row] for row in grid], cmap="viridis", aspect="auto")
            for r, row in enumerate(grid):
                for c, value in enumerate(row):
                    if value is None:  # refused, untrained or without weights: the white of a missing value
                        ax.text(c, r, "no result", ha="center", va="center", color="0.35", fontsize="small")
                    else:
                        ax.text(c, r, f"{value:.2f}", ha="center", va="center", color="white", fontsize="small")
            ax.set_xticks(range(len(v2)), v2)
            ax.set_yticks(range(len(v1)), v1)
            ax.set_xlabel(k2)
            ax.set_ylabel(k1)
            ax.set_title(f"test {metric} (%)")
            fig.colorbar(image, ax=ax)
        fig.tight_layout()
        written.append(_save(fig, out / "ablation_heatmap.png"))
    return written


def re_safe(key: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in key)


def _combos(axes: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    import itertools

    return [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*(v for _, v in axes))]


def _entry(done: dict[str, Any], axes: list[tuple[str, list[str]]], assignments: dict[str, str]) -> dict[str, Any] | None:
    name = ", ".join(f"{k}={assignments[k]}" for k, _ in axes)
    return done.get(name)


def _mean(done: dict[str, Any], axes: list[tuple[str, list[str]]], assignments: dict[str, str], metric: str) -> float | None:
    entry = _entry(done, axes, assignments)
    return None if entry is None else entry["test"][metric]["mean"]
