"""``diffrec list``: every registry and its entries, with parameters on request."""

from __future__ import annotations

import typer
from rich.table import Table

from diffrec.cli.common import PARTS_PANEL, app, console, handle_errors
from diffrec.registry import KINDS, load_builtin_parts, load_plugin, registry


@app.command("list", rich_help_panel=PARTS_PANEL)
@handle_errors
def list_cmd(
    plugin: list[str] = typer.Option([], "--plugin", help="Also import these plugin modules."),
    params: bool = typer.Option(False, "--params", help="Also print every part's parameters and every model's settings, with types, defaults and help."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the README's part table (Markdown) instead."),
) -> None:
    """Print every registry and its entries (model parts and data formats)."""
    from diffrec.catalog import markdown_table, parameters

    load_builtin_parts()
    for p in plugin:
        load_plugin(p)
    if markdown:
        print(markdown_table())
        return
    table = Table(title="diffrec parts")
    table.add_column("registry")
    table.add_column("name")
    table.add_column("description")
    if params:
        table.add_column("parameters (a model: its settings)")
    for kind in KINDS:
        for name in registry(kind).names():
            row = [kind, name, registry(kind).describe(name)]
            if params:
                row.append("\n".join(f"{p.describe()}  {p.help}".rstrip() for p in parameters(kind, name).values()))
            table.add_row(*row)
    console.print(table)
