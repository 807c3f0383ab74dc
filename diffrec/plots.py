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


def plot_run(run_dir: pathlib.Path, out: pathlib.Path, metrics: tuple[str, ...] = ("HR@10", "NDCG@10")) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_epochs(run_dir)
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["loss"] for r in records], marker="o", markersize=3)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    evaluated = [r for r in records if "valid" in r]
    for name in metrics:
        ax_metric.plot([r["epoch"] for r in evaluated], [r["valid"][name] for r in evaluated], marker="o", label=name)
    ax_metric.set(xlabel="epoch", ylabel="percent", title="validation")
    if evaluated:
        ax_metric.legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)
    return out
