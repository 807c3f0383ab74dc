"""``diffrec recommend``: the top K items of the whole catalogue for one history."""

from __future__ import annotations

import pathlib

import typer
from rich.table import Table

from diffrec.cli.common import MODEL_PANEL, SET_HELP, THREADS_HELP, app, console, dump_json, handle_errors, load_checkpoint, use_threads
from diffrec.errors import DiffrecError


@app.command(rich_help_panel=MODEL_PANEL)
@handle_errors
def recommend(
    checkpoint: pathlib.Path = typer.Option(..., help="A run directory written by `diffrec train`."),
    history: str = typer.Option(..., help='Item ids in time order, e.g. "12 55 301" (the dataset\'s own ids; see --ids).'),
    k: int = typer.Option(10, "-k", help="How many items."),
    seed: int = typer.Option(0, help="Seed of the reverse process."),
    include_history: bool = typer.Option(False, "--include-history", help="Allow items of the history in the list."),
    ids: str = typer.Option("raw", help="raw: --history and the output use the dataset's own item ids; internal: diffrec's 1..N."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    output_json: bool = typer.Option(False, "--json", help="Print JSON."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    threads: int = typer.Option(0, "--threads", help=THREADS_HELP),
) -> None:
    """Rank the whole catalogue for one history and print the top K items."""
    import torch

    from diffrec.checkpoint import RunDir
    from diffrec.data import history_batch
    from diffrec.evaluation import make_generator

    if ids not in ("raw", "internal"):
        raise DiffrecError(f"unknown --ids {ids!r}; valid choices: raw, internal")
    use_threads(threads)
    cfg, model, record, dev = load_checkpoint(checkpoint, device, set_)
    n = int(record["num_items"])
    originals = RunDir(checkpoint).item_ids() if ids == "raw" else None
    if originals is not None and len(originals) != n + 1:
        raise DiffrecError(f"{checkpoint}: its id map holds {len(originals) - 1} items, the model {n}")
    items = _history_ids(history, n, originals)
    allowed = n - (0 if include_history else len(set(items)))
    if not 1 <= k <= allowed:
        raise DiffrecError(f"-k must lie in 1..{allowed}")
    batch = history_batch(items, cfg.model.max_len).to(dev)
    exclude = torch.tensor([[0] if include_history else items], device=dev)  # (1, L)
    top_scores, top_ids = model.recommend(batch, k, exclude, make_generator(dev, seed))  # (1, k) each
    if not torch.isfinite(top_scores).all():
        raise DiffrecError("the model produced non-finite scores; its weights may be damaged")
    rows = [
        {"rank": r + 1, "item": originals[int(i)] if originals is not None else int(i), "internal_id": int(i), "score": float(v)}
        for r, (v, i) in enumerate(zip(top_scores[0], top_ids[0]))
    ]
    if output_json:
        print(dump_json(rows))
        return
    table = Table(title=f"top {k} for a history of {len(items)} items")
    table.add_column("rank", justify="right")
    table.add_column("item", justify="right")
    table.add_column("score", justify="right")
    for row in rows:
        table.add_row(str(row["rank"]), str(row["item"]), f"{row['score']:.4f}")
    console.print(table)


def _history_ids(history: str, n: int, originals: list[str] | None) -> list[int]:
    """Internal ids of the ``--history`` tokens (the dataset's own ids where ``originals`` maps them)."""
    tokens = history.replace(",", " ").split()
    if not tokens:
        raise DiffrecError("--history is empty")
    if originals is not None:
        inverse = {original: i for i, original in enumerate(originals) if i > 0}
        unknown = [t for t in tokens if t not in inverse]
        if unknown:
            raise DiffrecError(f"item {unknown[0][:40]!r} is not in the run's catalogue (--history takes the dataset's own ids; --ids internal takes 1..{n})")
        return [inverse[t] for t in tokens]
    try:
        items = [int(tok) for tok in tokens]
    except ValueError:
        raise DiffrecError(f"--history must be item ids separated by spaces, got {history[:80]!r}") from None
    bad = [i for i in items if not 1 <= i <= n]
    if bad:
        raise DiffrecError(f"item id {bad[0]} is outside 1..{n}")
    return items
