"""Reproduction of the paper's Table 2 under one protocol: models x seeds on a shipped dataset.

Each (model preset, seed) run lives in its own run directory and goes through the shared
runner (:mod:`diffrec.runner`): finished runs are reused, unfinished ones resumed, finished
ones extended when the epoch budget grows. The summary holds, per model, the per-seed and
aggregated (mean, std) validation and test metrics in percent, a paired t-test of DiffuRec
against each other model over the seeds, the commands, the git SHA, the machine and the
wall time. Presets and recipes live in :mod:`diffrec.presets`.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from diffrec import checkpoint as ckpt
from diffrec.config import RunConfig
from diffrec.data import load_dataset
from diffrec.errors import DiffrecError
from diffrec.params import part_name
from diffrec.presets import DATASET_SETTINGS, DATASETS, PAPER, PRESETS, RECIPES, Preset, preset_config
from diffrec.runner import _check_same_run, _never_trained, git_sha, machine, reevaluate, run_one
from diffrec.stats import METRICS, aggregate, paired_t_test, t_tests

__all__ = [
    "DATASETS",
    "DATASET_SETTINGS",
    "METRICS",
    "PAPER",
    "PRESETS",
    "RECIPES",
    "Preset",
    "_check_same_run",
    "_never_trained",
    "aggregate",
    "entry_key",
    "git_sha",
    "machine",
    "markdown_table",
    "paired_t_test",
    "preset_config",
    "reproduce",
    "t_tests",
]


def entry_key(name: str, recipe: str) -> str:
    """Summary key of a preset trained with a recipe: the bare name for the paper's recipe."""
    return name if recipe == "paper" else f"{name}@{recipe}"


def _previous_entries(path: pathlib.Path) -> dict[str, Any]:
    """Model entries of an earlier summary, so runs of other models and recipes stay in the table."""
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DiffrecError(f"cannot read the earlier summary {path}: {err}") from None
    models = summary.get("models") if isinstance(summary, dict) else None
    if not isinstance(models, dict) or "dataset" not in summary:
        raise DiffrecError(f"refusing to replace {path}: it is not a reproduction summary written by diffrec; move it away or pick another --out")
    return {k: v for k, v in models.items() if isinstance(v, dict) and "recipe" in v and "runs" in v}


def _with_earlier_seeds(earlier: dict[str, Any] | None, entry: dict[str, Any]) -> dict[str, Any]:
    """The entry plus the seeds that an earlier invocation ran for the same preset and recipe and
    this one did not: seeds accumulate across invocations (``--seed 1999`` adds to 1997 and 1998)."""
    if earlier is None or earlier.get("recipe") != entry["recipe"]:
        return entry
    ran = {r["seed"] for r in entry["runs"]}
    kept = [r for r in earlier["runs"] if isinstance(r, dict) and r.get("seed") not in ran and "test" in r and "valid" in r]
    if not kept:
        return entry
    runs = sorted(kept + entry["runs"], key=lambda r: r["seed"])
    return {**entry, "runs": runs, "test": aggregate([r["test"] for r in runs]), "valid": aggregate([r["valid"] for r in runs])}


def reproduce(
    dataset: str,
    *,
    models: list[str],
    seeds: list[int],
    data_root: pathlib.Path,
    out_dir: pathlib.Path,
    recipe: str = "paper",
    overrides: Callable[[RunConfig], None] | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or reuse) every (model, seed) run and write ``out_dir/<dataset>.json``."""
    if dataset not in DATASETS:
        raise DiffrecError(f"unknown dataset {dataset!r}; valid choices: {', '.join(DATASETS)}")
    data_path = data_root / dataset
    for name in models:  # unknown presets and recipes a preset cannot train are refused before any training
        preset_config(name, dataset, recipe, seeds[0] if seeds else 0, str(data_path))
    _previous_entries(out_dir / f"{dataset}.json")  # so is a file in the summary's place that diffrec did not write
    data = load_dataset(data_path)
    started = time.perf_counter()
    summary: dict[str, Any] = {
        "dataset": dataset,
        "recipe": recipe,
        "seeds": seeds,
        "unit": "percent",
        "protocol": "correct",
        "git_sha": git_sha(),
        "machine": machine(),
        "models": {},
        "paper": PAPER.get(dataset, {}),
    }
    models = sorted(models, key=lambda m: PRESETS[m].reevaluates is not None)  # trained runs first
    for name in models:
        entry: dict[str, Any] = {
            "preset": PRESETS[name].description,
            "recipe": recipe,
            "git_sha": summary["git_sha"],
            "runs": [],
        }
        for seed in seeds:
            config = preset_config(name, dataset, recipe, seed, str(data_path))
            if overrides is not None:
                overrides(config)
                config.validate()
            run_dir = out_dir / "runs" / dataset / recipe / name / f"seed{seed}"
            run = ckpt.RunDir(run_dir)
            command = f"diffrec train --config {run_dir / ckpt.CONFIG} --out {run_dir}"
            if PRESETS[name].reevaluates is not None:
                base = out_dir / "runs" / dataset / recipe / PRESETS[name].reevaluates / f"seed{seed}"
                command = f"diffrec evaluate --checkpoint {base} --reverse-sampler {part_name(config.model.reverse_sampler)}"
                final = run.read_json(ckpt.FINAL) if run.file(ckpt.FINAL).is_file() else {}
                final = reevaluate(base, config, data, run, final, label=f"{name} seed {seed}", log=log)
                entry["runs"].append({"seed": seed, "run_dir": str(run_dir), "command": command, **final})
                continue
            final = run_one(config, run_dir, data, str(data_path), label=f"{name} seed {seed}", show_progress=show_progress, log=log)
            entry["runs"].append({"seed": seed, "run_dir": str(run_dir), "command": command, **final})
        entry["machine"] = machine()  # after training, which sets the thread count
        entry["test"] = aggregate([r["test"] for r in entry["runs"]])
        entry["valid"] = aggregate([r["valid"] for r in entry["runs"]])
        summary["models"][entry_key(name, recipe)] = entry
    # entries of earlier (or concurrent) invocations stay; each records its own recipe, git SHA and
    # machine. The file is re-read here, after training, so a run that finished meanwhile is kept.
    # A lock beside the summary serialises this read-merge-write between processes.
    with ckpt.waiting_lock(out_dir / f".{dataset}.json.lock"):
        previous = _previous_entries(out_dir / f"{dataset}.json")
        summary["models"] = {**previous, **{k: _with_earlier_seeds(previous.get(k), v) for k, v in summary["models"].items()}}
        for key, entry in summary["models"].items():
            for old in [k for k in entry if k.startswith("t_test_vs_")]:
                del entry[old]
            reference = entry_key("diffurec", entry["recipe"])
            if key == reference or reference not in summary["models"]:
                continue
            entry["t_test_vs_" + reference] = t_tests(summary["models"][reference], entry)
        summary["machine"] = machine()
        summary["wall_seconds"] = time.perf_counter() - started
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_text(out_dir / f"{dataset}.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _mean_std(cell: dict[str, float | None]) -> str:
    return f"{cell['mean']:.2f}" if cell["std"] is None else f"{cell['mean']:.2f} ± {cell['std']:.2f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def markdown_table(summary: dict[str, Any], reference: str | None = None) -> str:
    """Test metrics (mean ± std over seeds), epochs run, paired-t-test p-values and wall time per
    seed. The tests compare each entry with DiffuRec of the same recipe over the seeds both ran or,
    given ``reference`` (a summary key such as ``diffurec@fast``), with that entry, so that recipes
    and controls can be tested against each other."""
    keys = METRICS
    tested = ("HR@10", "NDCG@10")
    if reference is not None and reference not in summary["models"]:
        raise DiffrecError(f"no entry {reference!r} in the summary; valid choices: {', '.join(summary['models'])}")
    against = reference or "DiffuRec"
    lines = [
        f"| model | seeds | epochs | {' | '.join(keys)} | {' | '.join(f'p {k} vs {against}' for k in tested)} | wall per seed |",
        "|---|---|---|" + "---|" * (len(keys) + len(tested)) + "---|",
    ]
    for name, entry in summary["models"].items():
        cells = [_mean_std(entry["test"][k]) for k in keys]
        if reference is None:
            t_test = next((v for k, v in entry.items() if k.startswith("t_test_vs_")), {})
        else:
            t_test = {} if name == reference else t_tests(summary["models"][reference], entry)
        p_values = ["n/a" if t_test.get(k) is None else f"{t_test[k]:.3g}" for k in tested]
        runs = entry["runs"]
        epochs = sorted({r.get("epochs_run") for r in runs if r.get("epochs_run") is not None})
        wall = [r["wall_seconds"] for r in runs if r.get("wall_seconds") is not None]
        lines.append(
            f"| {name} | {len(runs)} | {'/'.join(map(str, epochs)) or '?'} | {' | '.join(cells)} | {' | '.join(p_values)} | "
            f"{_duration(float(np.mean(wall))) if wall else '?'} |"
        )
    for name, row in summary.get("paper", {}).items():
        lines.append(f"| paper: {name} | 5 | | {' | '.join(f'{row[k]:.2f}' for k in keys)} | {' | '.join('' for _ in tested)} | |")
    return "\n".join(lines)
