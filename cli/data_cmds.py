"""``diffrec data stats`` and ``diffrec data prepare``."""

from __future__ import annotations

import pathlib
from typing import Optional

import typer
from rich.table import Table

from diffrec.cli.common import console, data_app, data_config, dump_json, handle_errors, with_data_options


@data_app.command("stats")
@handle_errors
@with_data_options
def data_stats(
    path: str = typer.Argument(..., help="Dataset file or folder, or 'synthetic'."),
    output_json: bool = typer.Option(False, "--json", help="Print JSON."),
    data_options: Optional[dict] = None,
) -> None:
    """Users, items, actions, average length, sparsity."""
    from diffrec.data import open_dataset

    dataset = open_dataset(data_config(path, data_options or {}))
    stats = dataset.stats()
    if output_json:
        print(dump_json({"name": dataset.name, **stats}))
        return
    table = Table(title=f"{dataset.name}")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    table.add_row("users", f"{stats['users']:,}")
    table.add_row("items", f"{stats['items']:,}")
    table.add_row("actions", f"{stats['actions']:,}")
    table.add_row("average length", f"{stats['avg_length']:.2f}")
    table.add_row("sparsity", f"{100 * stats['sparsity']:.4f}%")
    table.add_row("training examples", f"{stats['train_examples']:,}")
    console.print(table)


@data_app.command("prepare")
@handle_errors
@with_data_options
def data_prepare(
    raw: str = typer.Argument(..., help="A raw log (ratings.dat, .csv/.tsv, .inter, review .json[.gz]) or a folder holding one."),
    out: pathlib.Path = typer.Option(..., "--out", "-o", help="Folder to write sequences.txt, items.tsv, users.tsv and prepared.json into."),
    force: bool = typer.Option(False, "--force", help="Replace a folder that an earlier `diffrec data prepare` wrote."),
    output_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
    data_options: Optional[dict] = None,
) -> None:
    """Filter, order and re-index a raw log once; train on the folder it writes (`--data OUT`)."""
    from diffrec.data.prepare import describe, prepare

    record, reused = prepare(raw, out, data_config(raw, data_options or {}), force=force)
    if output_json:
        print(dump_json({"out": str(out), "reused": reused, **record}))
        return
    info = describe(record)
    verb = "reusing" if reused else "wrote"
    console.print(
        f"{verb} {out}: {info['users']:,} users, {info['items']:,} items, {info['actions']:,} actions (sequences sha256 {str(info['sequences_sha256'])[:12]})",
        highlight=False,
        soft_wrap=True,
    )


@data_app.command("synth")
@handle_errors
def data_synth(
    users: int = typer.Option(20000, help="Users."),
    items: int = typer.Option(100000, help="Items (10^6 and more generate in seconds)."),
    out: pathlib.Path = typer.Option(..., "--out", "-o", help="Folder to write sequences.txt, the id maps and prepared.json into."),
    zipf: float = typer.Option(1.0, help="Exponent of the items' Zipf popularity (0 = uniform, the built-in synthetic data's)."),
    seed: int = typer.Option(0, help="Seed of the generator."),
    min_length: int = typer.Option(5, help="Shortest sequence."),
    max_length: int = typer.Option(20, help="Longest sequence."),
    force: bool = typer.Option(False, "--force", help="Replace a folder that diffrec data prepare or synth wrote."),
) -> None:
    """A seeded synthetic dataset with Zipf popularity and planted sequential structure, written as sequences.txt."""
    from diffrec.data import make_synthetic
    from diffrec.data.prepare import synthesize

    params = {"users": users, "items": items, "zipf": zipf, "seed": seed, "min_length": min_length, "max_length": max_length}
    data = make_synthetic(users, items, seed, min_length=min_length, max_length=max_length, zipf=zipf)
    record = synthesize(out, data, params, force=force)
    console.print(
        f"wrote {out}: {record['users']:,} users, {record['items']:,} items, {record['actions']:,} actions (oracle HR@10 {100 * record['oracle_hr@10']:.1f}%)",
        highlight=False,
        soft_wrap=True,
    )
