"""``diffrec ablate`` and ``diffrec analyze``: the paper's studies as one command each."""

from __future__ import annotations

import pathlib
from typing import Optional

import typer

from diffrec.cli.common import RECIPE_HELP, STUDY_PANEL, THREADS_HELP, app, console, handle_errors, use_threads
from diffrec.errors import DiffrecError


@app.command(rich_help_panel=STUDY_PANEL)
@handle_errors
def ablate(
    data: str = typer.Option("synthetic", help="Dataset file or folder (or 'synthetic')."),
    out: pathlib.Path = typer.Option(..., "--out", "-o", help="Folder for the runs, ablation.json, ablation.md and the figures (new, empty, or an earlier ablation's: its runs are reused)."),
    runs: Optional[pathlib.Path] = typer.Option(None, "--runs", help="Folder of the trained runs (default OUT/runs); ablations of the same trainings can share one."),
    grid: list[str] = typer.Option([], "--grid", help="An axis KEY=V1,V2,...: a part, a part's parameter, a model setting or a config field (repeatable; the cells are the cross product)."),
    seeds: int = typer.Option(1, help="Number of seeds (1997, 1998, ...)."),
    seed: Optional[list[int]] = typer.Option(None, "--seed", help="Run exactly this seed (repeatable; replaces --seeds)."),
    recipe: str = typer.Option("paper", help=RECIPE_HELP),
    base: Optional[pathlib.Path] = typer.Option(None, help="A config.toml every cell starts from (default: the defaults)."),
    reference: Optional[str] = typer.Option(None, help="The cell the others are tested against, e.g. schedule=trunc_lin,approximator=transformer."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE fixed for every cell (repeatable)."),
    epochs: Optional[int] = typer.Option(None, help="Override the recipe's epoch budget."),
    jobs: int = typer.Option(1, help="Train this many runs side by side (worker processes; the threads are split among them)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads in all (split among --jobs)."),
    yes: bool = typer.Option(False, "--yes", help=f"Allow a grid of more than {100} trainings."),
    no_train: bool = typer.Option(False, "--no-train", help="Train, resume and extend nothing: summarise the finished runs (re-evaluating them for inference-only cells) and report the rest as untrained."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train a grid of settings over seeds and test every cell against a reference (tables, statistics, figures)."""
    import shlex
    import sys

    from rich.table import Table

    from diffrec import ablate as ab
    from diffrec import ablation_grid as grid_of
    from diffrec.ablation_report import figures, markdown
    from diffrec.files import atomic_write

    axes = grid_of.parse_grid(list(grid))
    if jobs < 1:
        raise DiffrecError("--jobs must be >= 1")
    seed_list = sorted(set(seed)) if seed else [1997 + i for i in range(seeds)]
    if seeds < 1:
        raise DiffrecError("--seeds must be >= 1")
    per_job = None if threads is None else max(1, threads // jobs)
    base_cfg = grid_of.base_config(data, base, recipe, list(set_), epochs, per_job)
    cells = grid_of.build_cells(base_cfg, axes)
    ref = grid_of.parse_reference(reference, axes)
    trainings = len({grid_of.slug(c.train) for c in cells if c.refused is None}) * len(seed_list)
    if trainings > ab.LARGE_GRID and not yes and not no_train:
        raise DiffrecError(f"the grid needs {trainings} trainings; pass --yes to run more than {ab.LARGE_GRID}")
    log = (lambda line: console.print(line, highlight=False, soft_wrap=True))
    command = "diffrec " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = ab.ablate(cells, seed_list, out, reference=ref, runs=runs, jobs=jobs, command=command, show_progress=not quiet and console.is_terminal, log=log, train=not no_train)
    atomic_write(out / "ablation.md", markdown(summary))
    written = figures(summary, [(a.key, a.values) for a in axes], out)
    table = Table(title=f"ablation ({len(seed_list)} seeds, test split, %)")
    for column in ("cell", "seeds", "HR@10", "NDCG@10", "Δ NDCG@10", "p (Holm)"):
        table.add_column(column)
    for name, entry in summary["cells"].items():
        if entry["status"] != "ok":
            table.add_row(name, "0", entry["status"], entry.get("reason", "")[:60], "", "")
            continue
        vs = entry.get("vs_reference", {}).get("NDCG@10")
        table.add_row(
            name,
            str(len(entry["runs"])),
            f"{entry['test']['HR@10']['mean']:.2f}",
            f"{entry['test']['NDCG@10']['mean']:.2f}",
            "" if vs is None else f"{vs['difference']:+.2f}",
            "" if vs is None or vs.get("p_holm") is None else f"{vs['p_holm']:.3g}",
        )
    console.print(table)
    console.print(f"wrote {out / 'ablation.json'}, {out / 'ablation.md'} and {len(written)} figures", highlight=False)



@app.command(rich_help_panel=STUDY_PANEL)
@handle_errors
def analyze(
    checkpoint: list[pathlib.Path] = typer.Option([], "--checkpoint", help="A run directory; repeat to compare several runs on the same data."),
    out: pathlib.Path = typer.Option(..., "--out", "-o", help="Folder for analysis.json and the figures."),
    data: Optional[str] = typer.Option(None, help="Dataset (defaults to the runs' own)."),
    split: str = typer.Option("test", help="test or valid."),
    samples: int = typer.Option(1, help="Reverse samples per user for the multi-sample study (1, 2, 4, ... up to this)."),
    k: int = typer.Option(10, "-k", help="List length K of the metrics and the top-K lists."),
    force: bool = typer.Option(False, "--force", help="Replace an analysis folder that diffrec wrote."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    threads: int = typer.Option(0, "--threads", help=THREADS_HELP),
) -> None:
    """Accuracy by popularity and history length, beyond-accuracy metrics and multi-sample fusion of trained runs."""
    import json

    from diffrec.analysis import analyze_model
    from diffrec.analysis_plots import figures
    from diffrec.checkpoint import RunDir, data_fingerprint
    from diffrec.files import atomic_write
    from diffrec.runner import git_sha, machine
    from diffrec.building import load_run_model, select_device

    if not checkpoint:
        raise DiffrecError("give at least one --checkpoint")
    use_threads(threads)
    if split not in ("test", "valid"):
        raise DiffrecError(f"unknown split {split!r}; valid choices: test, valid")
    if samples < 1:
        raise DiffrecError(f"--samples must be >= 1, got {samples}")
    if k < 1:
        raise DiffrecError("-k must be >= 1")
    _check_out(out, force)
    dev = select_device(device)
    runs, dataset, fingerprint = [], None, None
    loaded = []
    for path in checkpoint:  # every run and its data are checked before anything is computed or written
        config, model, record = load_run_model(path, dev)
        if dataset is None:
            dataset = RunDir(path).open_data(config, data)
            fingerprint = data_fingerprint(dataset)
        if record.get("fingerprint") not in (None, fingerprint) and data is None:
            raise DiffrecError(f"{path} was trained on other data than {checkpoint[0]} (fingerprints differ); analyse runs of one dataset together")
        if record["num_items"] != dataset.num_items:
            raise DiffrecError(f"{path}: the data has {dataset.num_items} items but the model was trained on {record['num_items']}")
        loaded.append((path, config, model))
    for path, config, model in loaded:
        console.print(f"analysing {path} ({config.model.model})", highlight=False)
        result = analyze_model(model, dataset, config.eval, max_len=config.model.max_len, split=split, k=k, samples=samples, device=dev, show_progress=not quiet and console.is_terminal)
        runs.append({"checkpoint": str(path), "label": f"{config.model.model}: {path.name}", "model": config.model.model, **result})
    analysis = {"kind": KIND, "split": split, "k": k, "samples": samples, "dataset": dataset.name, "runs": runs, "git_sha": git_sha(), "machine": machine()}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "analysis.json", json.dumps(analysis, indent=2) + "\n")
    written = figures(analysis, out)
    for run in runs:
        b = run["beyond"]
        console.print(
            f"{run['label']}: HR@{k} {run['overall'][f'HR@{k}']:.2f}  NDCG@{k} {run['overall'][f'NDCG@{k}']:.2f}  head/tail NDCG@{k} "
            f"{run['popularity']['head'][f'NDCG@{k}']:.2f}/{run['popularity']['tail'][f'NDCG@{k}']:.2f}  coverage {b['coverage']:.1f}%  novelty {b['novelty']:.2f}  "
            f"Gini {b['gini']:.3f}  ILD {b['ild']:.3f}",
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"wrote {out / 'analysis.json'} and {len(written)} figures", highlight=False)


KIND = "diffrec analysis"
ANALYSIS_FILES = frozenset({"analysis.json", "popularity.png", "length.png", "beyond.png", "samples.png"})


def _check_out(out: pathlib.Path, force: bool) -> None:
    """``out`` must be new or empty, or (with --force) an analysis folder that diffrec wrote."""
    import json

    if not out.exists():
        return
    if not out.is_dir():
        raise DiffrecError(f"{out} exists and is not a folder")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not force:
        raise DiffrecError(f"{out} exists and is not empty (use --force to replace an analysis that diffrec wrote)")
    try:
        mine = json.loads((out / "analysis.json").read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        mine = False
    foreign = [e for e in entries if e not in ANALYSIS_FILES]
    if not mine or foreign:
        raise DiffrecError(f"refusing to replace {out}: it is not an analysis folder that diffrec wrote (it holds {', '.join((foreign or entries)[:5])})")
