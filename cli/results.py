"""``diffrec reproduce``, ``diffrec plot`` and ``diffrec bench``: results, figures, microbenchmarks."""

from __future__ import annotations

import json
import pathlib
from typing import Optional

import typer

from diffrec.cli.common import RECIPE_HELP, STUDY_PANEL, app, bench_app, console, handle_errors
from diffrec.errors import DiffrecError
from diffrec.registry import load_builtin_parts, registry


@app.command(rich_help_panel=STUDY_PANEL)
@handle_errors
def reproduce(
    dataset: Optional[str] = typer.Option(None, help="beauty, toys or ml-1m (required unless --list-presets)."),
    models: str = typer.Option("diffurec,sasrec", help="Comma-separated model presets (see --list-presets)."),
    seeds: int = typer.Option(1, help="Number of seeds (1997, 1998, ...)."),
    seed: Optional[list[int]] = typer.Option(None, "--seed", help="Run exactly this seed (repeatable; replaces --seeds). Seeds accumulate in the table across invocations."),
    recipe: str = typer.Option("paper", help=RECIPE_HELP),
    data_root: pathlib.Path = typer.Option(pathlib.Path("../shared/datasets"), help="Folder holding beauty/, toys/, ml-1m/."),
    out: pathlib.Path = typer.Option(pathlib.Path("benchmarks/results"), help="Where runs and <dataset>.json go."),
    epochs: Optional[int] = typer.Option(None, help="Override the recipe's epoch budget."),
    eval_every: Optional[int] = typer.Option(None, help="Override the recipe's validation interval (epochs)."),
    patience: Optional[int] = typer.Option(None, help="Override the recipe's patience (validations)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda."),
    threads: Optional[int] = typer.Option(None, help="CPU threads."),
    precision: Optional[str] = typer.Option(None, help="fp32 or bf16."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    list_presets: bool = typer.Option(False, "--list-presets", help="Print the model presets and the recipes, with their settings, and exit."),
    table_only: bool = typer.Option(False, "--table-only", help="Print the table of OUT/<dataset>.json and exit (trains nothing)."),
    reference: Optional[str] = typer.Option(None, help="Table entry the printed t-tests compare against, e.g. diffurec@fast (default: DiffuRec of each entry's recipe)."),
    reference_summary: Optional[pathlib.Path] = typer.Option(
        None, help="The summary that holds --reference, when it is not OUT/<dataset>.json (e.g. fp32 runs for a table of bf16 runs kept in another --out); its entry is printed first."
    ),
) -> None:
    """Train every model preset over seeds on a shipped dataset and tabulate against the paper."""
    from diffrec import reproduce as rep

    if list_presets:
        import textwrap

        from diffrec.presets import RECIPE_PURPOSE, RECIPES, recipe_settings

        for title, rows in (
            ("model presets", {name: preset.description for name, preset in rep.PRESETS.items()}),
            ("recipes", {name: f"{RECIPE_PURPOSE[name]}: {recipe_settings(name)}" for name in RECIPES}),
        ):
            width = 2 + max(map(len, rows)) + 2
            print(f"{title}:")
            for name, text in rows.items():  # a long description wraps under itself
                lead = f"  {name}".ljust(width)
                print(textwrap.fill(text, width=max(console.width, width + 30), initial_indent=lead, subsequent_indent=" " * width, break_on_hyphens=False))
        return
    if dataset is None:
        raise DiffrecError("--dataset is required: beauty, toys or ml-1m")
    if dataset not in rep.DATASETS:
        raise DiffrecError(f"unknown dataset {dataset!r}; valid choices: {', '.join(rep.DATASETS)}")
    if reference_summary is not None and reference is None:
        raise DiffrecError("--reference-summary needs --reference, the entry of it to compare against")
    external = _reference_entry(reference_summary, reference) if reference_summary is not None else None
    if table_only:
        path = out / f"{dataset}.json"
        summary = _read_summary(path)
        try:
            table = rep.markdown_table(*_with_reference(summary, reference, reference_summary, external))
        except (ValueError, KeyError, TypeError) as err:
            raise DiffrecError(f"{path} is not a reproduction summary ({err})") from None
        print(table)
        return
    names = [m.strip() for m in models.split(",") if m.strip()]
    for name in names:
        if name not in rep.PRESETS:
            raise DiffrecError(f"unknown model preset {name!r}; valid choices: {', '.join(rep.PRESETS)}")
    if seeds < 1:
        raise DiffrecError("--seeds must be >= 1")
    seed_list = sorted(set(seed)) if seed else [1997 + i for i in range(seeds)]
    if not (data_root / dataset).exists():
        raise DiffrecError(f"dataset folder not found: {data_root / dataset}")
    load_builtin_parts()
    for name in names:
        registry("model").get(rep.PRESETS[name].model)
    if reference is not None and external is None:  # checked before training, not after
        earlier = out / f"{dataset}.json"
        known = {rep.entry_key(name, recipe) for name in names}
        if earlier.is_file():
            try:
                known |= set(json.loads(earlier.read_text()).get("models", {}))
            except (OSError, ValueError, AttributeError):
                pass  # reproduce() reports an unreadable summary
        if reference not in known:
            raise DiffrecError(f"--reference {reference!r} is neither in {earlier} nor trained by this command; valid choices: {', '.join(sorted(known))}")

    train_overrides = {
        "epochs": epochs,
        "eval_every": eval_every,
        "patience": patience,
        "device": device,
        "num_threads": threads,
        "precision": precision,
    }

    def apply(config) -> None:
        for key, value in train_overrides.items():
            if value is not None:
                setattr(config.train, key, value)

    summary = rep.reproduce(
        dataset,
        models=names,
        seeds=seed_list,
        data_root=data_root,
        out_dir=out,
        recipe=recipe,
        overrides=apply,
        show_progress=not quiet and console.is_terminal,
        log=lambda line: console.print(line, highlight=False, soft_wrap=True),
    )
    print(rep.markdown_table(*_with_reference(summary, reference, reference_summary, external)))
    console.print(f"summary written to {out / (dataset + '.json')}", highlight=False)


def _read_summary(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise DiffrecError(f"{path} not found (run the reproduction first)")
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DiffrecError(f"{path} is not a reproduction summary ({err})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("models"), dict):
        raise DiffrecError(f"{path} is not a reproduction summary (it has no models)")
    return summary


def _reference_entry(path: pathlib.Path, reference: str | None) -> dict:
    """The entry ``reference`` of the summary at ``path`` (checked before anything trains)."""
    models = _read_summary(path)["models"]
    if reference not in models:
        raise DiffrecError(f"--reference {reference!r} is not in {path}; valid choices: {', '.join(sorted(models))}")
    return models[reference]


def _with_reference(summary: dict, reference: str | None, path: pathlib.Path | None, external: dict | None) -> tuple[dict, str | None]:
    """The summary and reference key to tabulate: an entry from another summary goes first, named with its file."""
    if external is None:
        return summary, reference
    key = f"{reference} ({path})"
    return {**summary, "models": {key: external, **summary["models"]}}, key


@app.command(rich_help_panel=STUDY_PANEL)
@handle_errors
def plot(
    run: list[pathlib.Path] = typer.Option([], "--run", help="A run directory; repeat to overlay several runs."),
    summary: Optional[pathlib.Path] = typer.Option(None, "--summary", help="A reproduction summary (benchmarks/results/<dataset>.json) to plot instead of runs."),
    sweep: list[pathlib.Path] = typer.Option([], "--sweep", help="A sweep of `diffrec evaluate --save-sweep`; repeat to overlay several runs' sweeps."),
    schedules: bool = typer.Option(False, "--schedules", help="Draw abar_t of every registered schedule (the paper's Figure 4); needs --out."),
    steps: int = typer.Option(32, help="With --schedules: the number of diffusion steps T."),
    out: Optional[pathlib.Path] = typer.Option(None, help="PNG file (default with one run: RUN/curves.png; with --summary or one --sweep: beside it, .png)."),
    force: bool = typer.Option(False, "--force", help="Replace the PNG (only one that diffrec drew)."),
) -> None:
    """Plot runs' training curves, a reproduction summary against the paper, sweeps or the noise schedules.

    --run: training loss and validation HR@10/NDCG@10 per epoch, of one run or several overlaid;
    --summary: a reproduction summary's test HR@10/NDCG@10 per model against the paper's;
    --sweep: evaluation sweeps; --schedules: alpha-bar of every registered schedule.
    """
    from diffrec.files import check_overwrite
    from diffrec.plots import is_diffrec_png, plot_runs, plot_summary, plot_sweeps
    from diffrec.sweep import load_sweep

    if sum((bool(run), summary is not None, bool(sweep), schedules)) != 1:
        raise DiffrecError("give either --run (one or more), --summary, --sweep (one or more) or --schedules")
    if schedules:
        from diffrec.analysis_plots import schedule_figure

        if out is None:
            raise DiffrecError("--schedules needs --out FILE.png")
        if steps < 1:
            raise DiffrecError(f"--steps must be >= 1, got {steps}")
        check_overwrite(out, force, is_diffrec_png, "plot")
        console.print(f"wrote {schedule_figure(steps, out)}", highlight=False)
        return
    if sweep:
        sweeps = [load_sweep(path) for path in sweep]
        if out is None and len(sweep) > 1:
            raise DiffrecError("--out is required when plotting several sweeps")
        target = out or sweep[0].with_suffix(".png")
        check_overwrite(target, force, is_diffrec_png, "plot")
        console.print(f"wrote {plot_sweeps(sweeps, target)}", highlight=False)
        return
    if summary is not None:
        if not summary.is_file():
            raise DiffrecError(f"summary not found: {summary}")
        try:
            data = json.loads(summary.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise DiffrecError(f"{summary} is not JSON ({err})") from None
        target = out or summary.with_suffix(".png")
    else:
        if out is None and len(run) > 1:
            raise DiffrecError("--out is required when plotting several runs")
        target = out or run[0] / "curves.png"
    check_overwrite(target, force, is_diffrec_png, "plot")
    written = plot_summary(data, target) if summary is not None else plot_runs(run, target)
    console.print(f"wrote {written}", highlight=False)


@bench_app.command("kernels")
@handle_errors
def bench_kernels(
    op: list[str] = typer.Option([], "--op", help="Ops to run (repeatable): noise_inject, inner_product_topk, linear_cross_entropy; default all."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    quick: bool = typer.Option(False, "--quick", help="One or two sizes per op, fewer repetitions."),
    output_json: Optional[pathlib.Path] = typer.Option(None, "--json", help="Also write the rows as JSON."),
) -> None:
    """Median time, peak memory, GB/s and TFLOP/s of the fused kernels against unfused PyTorch (and faiss on CPU)."""
    import torch

    from diffrec.kernels.bench import OPS, print_table, run_benchmarks

    unknown = [o for o in op if o not in OPS]
    if unknown:
        raise DiffrecError(f"unknown op {unknown[0]!r}; valid choices: {', '.join(OPS)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DiffrecError("device 'cuda' was requested but CUDA is not available")
    if output_json is not None and output_json.exists():
        raise DiffrecError(f"{output_json} exists; choose another path")
    rows = run_benchmarks(list(op) or list(OPS), device, quick)
    print_table(rows, console)
    if output_json is not None:
        from diffrec.files import atomic_write

        atomic_write(output_json, json.dumps(rows, indent=2) + "\n")

