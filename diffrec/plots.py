"""Training curves of a run directory: loss and validation metrics per epoch, as a PNG."""

from __future__ import annotations

import json
import pathlib

from diffrec import checkpoint as ckpt
from diffrec.errors import DiffrecError


def read_epochs(run_dir: pathlib.Path) -> list[dict]:
    path = run_dir / ckpt.EPOCHS
    if not path.is_file():
        raise DiffrecError(f"{path} not found (is {run_dir} a run directory?)")
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise DiffrecError(f"{path}:{lineno}: not valid JSON") from None
    if not records:
        raise DiffrecError(f"{path} holds no epochs yet")
    return records


def run_label(run_dir: pathlib.Path) -> str:
    """A short label naming a run by its last path parts (e.g. ``fast/diffurec/seed1997``)."""
    return "/".join(run_dir.resolve().parts[-3:])


def plot_runs(run_dirs: list[pathlib.Path], out: pathlib.Path, metrics: tuple[str, ...] = ("HR@10", "NDCG@10")) -> pathlib.Path:
    """Loss and validation curves of one or more runs, overlaid (e.g. two recipes on the same seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not run_dirs:
        raise DiffrecError("no run directory to plot")
    runs = [(run_label(d) if len(run_dirs) > 1 else "", read_epochs(d)) for d in run_dirs]
    fig, axes = plt.subplots(1, 1 + len(metrics), figsize=(5 * (1 + len(metrics)), 4))
    ax_loss, metric_axes = axes[0], axes[1:]
    styles = ["-", "--", ":", "-."]
    for i, (label, records) in enumerate(runs):
        style = styles[i % len(styles)]
        ax_loss.plot([r["epoch"] for r in records], [r["loss"] for r in records], style, marker="o", markersize=3, label=label or None)
        evaluated = [r for r in records if "valid" in r]
        for ax, name in zip(metric_axes, metrics):
            points = [(r["epoch"], r["valid"][name]) for r in evaluated if name in r["valid"]]
            if points:
                ax.plot(*zip(*points), style, marker="o", label=label or name)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    for ax, name in zip(metric_axes, metrics):
        ax.set(xlabel="epoch", ylabel="percent", title=f"validation {name}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if len(runs) > 1:
        ax_loss.legend(fontsize="small")
    fig.suptitle(run_dirs[0].name if len(run_dirs) == 1 else "runs compared")
    fig.tight_layout()
    return _save(fig, out)


#: the PNG text chunk that marks a figure as diffrec's own (``plot --force`` replaces only those)
PNG_SOFTWARE = "diffrec"


def is_diffrec_png(path: pathlib.Path) -> bool:
    """Whether ``path`` is a PNG that diffrec drew (its ``Software`` text chunk says so)."""
    from diffrec.files import read_head

    head = read_head(path, 4096)
    return head.startswith(b"\x89PNG\r\n\x1a\n") and b"tEXtSoftware\x00" + PNG_SOFTWARE.encode() in head


def _save(fig, out: pathlib.Path) -> pathlib.Path:
    """Write the figure through a temporary file, so that ``out`` is never half-written."""
    import matplotlib.pyplot as plt

    from diffrec.files import atomic_file

    try:
        with atomic_file(out) as tmp:
            fig.savefig(tmp, dpi=120, format="png", metadata={"Software": PNG_SOFTWARE})
    finally:
        plt.close(fig)
    return out


def _seeds_and_epochs(entry: dict) -> str:
    runs = entry["runs"]
    epochs = sorted({r["epochs_run"] for r in runs if r.get("epochs_run") is not None})
    return f"{len(runs)} seed{'s' if len(runs) > 1 else ''}, {'/'.join(map(str, epochs)) or '?'} ep"


def plot_summary(summary: dict, out: pathlib.Path, metrics: tuple[str, ...] = ("HR@10", "NDCG@10")) -> pathlib.Path:
    """Test metrics of a reproduction summary (``benchmarks/results/<dataset>.json``): one bar per
    entry (mean over seeds, ± one std), a dot per seed, and a diamond at the paper's Table-2 value of
    the entry's model."""
    return _save(summary_figure(summary, metrics), out)


def _model_of(key: str) -> str:
    """The registered model behind a summary key (``sasrec-ce@fast`` -> ``sasrec``)."""
    from diffrec.presets import PRESETS

    preset = key.split("@")[0]
    return PRESETS[preset].model if preset in PRESETS else preset


def summary_figure(summary: dict, metrics: tuple[str, ...] = ("HR@10", "NDCG@10")):
    """The figure of :func:`plot_summary`, entries sorted by their mean of the last metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        entries = sorted(summary["models"].items(), key=lambda kv: kv[1]["test"][metrics[-1]]["mean"])
        paper = summary.get("paper", {})
        dataset = summary.get("dataset", "")
    except (KeyError, TypeError, AttributeError) as err:
        raise DiffrecError(f"not a reproduction summary (missing {err})") from None
    if not entries:
        raise DiffrecError("the summary holds no models")
    try:  # read everything before drawing, so that a malformed summary leaves no figure open
        columns = {
            name: (
                [e["test"][name]["mean"] for _, e in entries],
                [e["test"][name]["std"] or 0.0 for _, e in entries],
                [[r["test"][name] for r in e["runs"]] for _, e in entries],
            )
            for name in metrics
        }
        labels = [f"{k} ({_seeds_and_epochs(e)})" for k, e in entries]
        models = [_model_of(k) for k, _ in entries]
    except (KeyError, TypeError) as err:
        raise DiffrecError(f"not a reproduction summary (missing {err})") from None
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 0.9 + 0.38 * len(entries)), sharey=True)
    axes = [axes] if len(metrics) == 1 else list(axes)
    rows = range(len(entries))
    for ax, name in zip(axes, metrics):
        means, stds, seeds = columns[name]
        ax.barh(rows, means, xerr=stds, color="#9ecae1", edgecolor="#3182bd", capsize=3)
        for row, values in zip(rows, seeds):
            ax.plot(values, [row] * len(values), "o", color="#08519c", markersize=3)
        marks = [(paper[model][name], row) for row, model in zip(rows, models) if name in paper.get(model, {})]
        if marks:
            ax.plot(*zip(*marks), "D", linestyle="none", color="#de2d26", markersize=5, label="paper's Table 2, same model")
        ax.set(xlabel=f"test {name} (percent)", title=name)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small", loc="lower right")
    axes[0].set_yticks(list(rows), labels, fontsize="small")
    fig.suptitle(f"{dataset}: test metrics, mean ± std over seeds, a dot per seed")
    fig.tight_layout()
    return fig


def readable_span(ax, values: list[float]) -> None:
    """Show a metric over at least max(0.5 points, 10 % of its largest value), so that differences in
    the third decimal do not fill the axis and look like effects."""
    top, bottom = max(values), min(values)
    span = max(0.5, 0.1 * abs(top))
    if top - bottom < span:
        mid = (top + bottom) / 2
        low = max(0.0, mid - span / 2) if bottom >= 0 else mid - span / 2
        ax.set_ylim(low, low + span)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")


def plot_sweeps(sweeps: list[dict], out: pathlib.Path, metrics: tuple[str, ...] = ("HR@10", "NDCG@10")) -> pathlib.Path:
    """Sweeps of ``diffrec evaluate --save-sweep``: each metric and the evaluation seconds against the
    swept value, one line per run (log scale where the values are positive and span a decade or more)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = {s["key"] for s in sweeps}
    if len(keys) > 1:
        raise DiffrecError(f"the sweeps vary different settings ({', '.join(sorted(keys))}); plot one at a time")
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4.6 * (len(metrics) + 1), 3.8))
    numeric = all(isinstance(p["value"], (int, float)) for s in sweeps for p in s["points"])
    for sweep in sweeps:
        points = sorted(sweep["points"], key=lambda p: p["value"]) if numeric else sweep["points"]
        xs = [p["value"] for p in points] if numeric else [str(p["value"]) for p in points]
        label = f"{sweep.get('model', '?')}: {run_label(pathlib.Path(sweep['checkpoint']))}"
        for ax, name in zip(axes, (*metrics, "seconds")):
            ys = [p["seconds"] if name == "seconds" else p["metrics"][name] for p in points]
            ax.plot(xs, ys, marker="o", label=label)
    lo = min((p["value"] for s in sweeps for p in s["points"]), default=1) if numeric else 0
    hi = max((p["value"] for s in sweeps for p in s["points"]), default=1) if numeric else 0
    for ax, name in zip(axes, (*metrics, "seconds")):
        if numeric and lo > 0 and hi / lo >= 10:
            ax.set_xscale("log", base=2)
        if name != "seconds":
            readable_span(ax, [p["metrics"][name] for s in sweeps for p in s["points"]])
        ax.set_xlabel(next(iter(keys)))
        ax.set_ylabel(f"{name} (%)" if name != "seconds" else f"evaluation seconds ({sweeps[0].get('split', 'test')}, {sweeps[0].get('users', '?'):,} users)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(f"{next(iter(keys))}: accuracy and cost ({sweeps[0].get('split', 'test')} split)")
    fig.tight_layout()
    return _save(fig, out)
