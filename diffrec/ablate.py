"""``diffrec ablate``: a grid of settings x seeds, trained through the shared runner, with statistics.

An axis is any ``--set`` key (a part, a part's parameter, a model setting or a config field)
with a list of values; the cells are the cross product. Axes that only change inference
(the reverse sampler and its parameters, the rounding, evaluation settings) do not retrain:
cells that differ only in them share one trained run per seed, whose best weights are
re-evaluated for each (cached). Every training is one run directory under
``RUNS/<cell>/seed<N>`` (``RUNS`` is ``OUT/runs`` unless given, so that ablations over the
same trainings, a steps grid beside a rounding grid, can share them) and goes through
:func:`diffrec.runner.run_one`, so finished runs are reused, unfinished ones resumed, and two
processes can share a grid (a run another process holds is skipped and reported). A training
that ``RUNS`` already holds under another cell's name (a schedules grid whose ``trunc_lin`` cell
is a rounding grid's reference) is found by its config and data and reused there. A cell whose
combination is invalid is refused with its reason while the others go on.

``OUT`` must be new, empty or an ablation folder that diffrec wrote (:func:`check_out`): a
second invocation reuses its runs and rewrites its summary and figures, and anything else in
it is never touched.

The grid itself (axes, cells and their configs) is :mod:`diffrec.ablation_grid`. The summary (``ablation.json``) has per cell the per-seed metrics, mean, standard deviation
and 95% interval of every metric, and against the reference cell the difference, a paired
t-test over the seeds both ran and Holm-corrected p-values (over the cells, per metric).
:mod:`diffrec.ablation_report` writes ``ablation.md`` and the figures.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

from diffrec import checkpoint as ckpt
from diffrec.config import RunConfig
from diffrec.errors import DiffrecError
from diffrec.ablation_grid import Cell, slug
from diffrec.runner import WeightsMissing, complete, git_sha, machine, reevaluate, run_one
from diffrec.stats import METRICS, aggregate, ci95, holm, paired_t_test

#: grids with more trainings than this need ``yes=True`` (``--yes``)
LARGE_GRID = 100
KIND = "diffrec ablation"


def check_out(out: pathlib.Path, runs: pathlib.Path | None = None) -> None:
    """``out`` must be new, empty or an ablation folder that diffrec wrote: only its runs and
    evaluation caches, ``ablation.json`` (its kind), ``ablation.md`` (its first line) and
    ``ablation_*.png`` (diffrec's PNG marker). ``runs`` (``--runs``), when given, must be a folder
    or not exist; the runs in it protect themselves (a run directory refuses what is not a run)."""
    from diffrec.ablation_report import MARK
    from diffrec.files import is_temp_name, read_head
    from diffrec.plots import is_diffrec_png

    for path, what in ((out, "--out"), (runs, "--runs")):
        if path is not None and os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
            raise DiffrecError(f"{what} {path} exists and is not a folder")
    if not out.is_dir():
        return

    def mine(entry: pathlib.Path) -> bool:
        name = entry.name
        if name in ("runs", "evals"):
            return entry.is_dir() and not entry.is_symlink()
        if entry.is_symlink() or not entry.is_file():
            return False
        if name == "ablation.json":
            try:
                return json.loads(entry.read_text()).get("kind") == KIND
            except (OSError, ValueError, AttributeError):
                return False
        if name == "ablation.md":  # before the marker, ablation.md began with its table's header
            return read_head(entry, 64).decode("utf-8", "replace").startswith((MARK, "| cell | seeds | HR@10 | NDCG@10 | Δ HR@10 |"))
        return (name.startswith("ablation_") and name.endswith(".png") and is_diffrec_png(entry)) or is_temp_name(name)

    foreign = sorted(e.name for e in out.iterdir() if not mine(e))
    if foreign:
        raise DiffrecError(f"refusing to write into {out}: it holds {', '.join(foreign[:5])}, which diffrec ablate did not write (give a new or empty --out)")


def _train_job(job: tuple[dict[str, Any], str, str, str, bool]) -> tuple[str, dict[str, Any] | None, str | None]:
    """Train one (cell, seed) run in a worker process: (run dir, final metrics or None, error or None)."""
    from diffrec.data.source import open_dataset

    raw, run_dir, data_path, label, progress = job
    try:
        config = RunConfig.from_dict(raw).validate()
        final = run_one(config, pathlib.Path(run_dir), open_dataset(config.data), data_path, label=label, show_progress=progress)
        return run_dir, final, None
    except DiffrecError as exc:
        return run_dir, None, str(exc)


def ablate(
    cells: list[Cell],
    seeds: list[int],
    out: pathlib.Path,
    *,
    reference: dict[str, str] | None,
    runs: pathlib.Path | None = None,
    jobs: int = 1,
    command: str = "",
    show_progress: bool = False,
    log: Callable[[str], None] = print,
    train: bool = True,
) -> dict[str, Any]:
    """Train and evaluate every cell over ``seeds`` (the runs in ``runs``, default ``OUT/runs``);
    write and return ``OUT/ablation.json``. With ``train=False`` only finished runs are used (and
    re-evaluated for inference-only cells); the others are listed as ``untrained``."""
    from diffrec.data.source import open_dataset

    check_out(out, runs)
    runs = out / "runs" if runs is None else runs

    started = time.perf_counter()
    valid = [c for c in cells if c.refused is None]
    for cell in cells:
        if cell.refused is not None:
            log(f"{cell.name}: refused ({cell.refused})")
    if not valid:
        raise DiffrecError("every cell of the grid is refused; nothing to train")
    data = open_dataset(valid[0].config.data)  # type: ignore[union-attr]
    trainings: dict[tuple[str, int], RunConfig] = {}
    for cell in valid:
        for seed in seeds:
            config = copy.deepcopy(cell.train_config)
            config.train.seed = seed  # type: ignore[union-attr]
            trainings.setdefault((slug(cell.train), seed), config)
    dirs = run_directories(trainings, runs, data, log)
    items = [(dirs[key], config, f"{key[0]} seed {key[1]}") for key, config in trainings.items()]
    pending = [] if train else [item for item in items if not finished(item[0], item[1])]
    for _, _, label in pending:
        log(f"{label}: not trained yet (--no-train)")
    untrained = [str(run_dir) for run_dir, _, _ in pending]
    items = [item for item in items if item not in pending]
    results, busy, failed = _run_trainings(items, data, jobs, show_progress, log)
    unweighted: list[str] = []
    if not train and not results:
        raise DiffrecError(f"no run of the grid has finished under {runs}; nothing to summarise (--no-train)")
    for cell in valid:
        for seed in seeds:
            run_dir = dirs[(slug(cell.train), seed)]
            final = results.get(str(run_dir))
            if str(run_dir) in failed:
                cell.refused = f"seed {seed}: {failed[str(run_dir)]}"
            if final is None:
                continue
            if cell.config.to_dict() != cell.train_config.to_dict():  # type: ignore[union-attr]  # inference-only changes: evaluate the shared weights
                cache = ckpt.RunDir(out / "evals" / slug(cell.assignments) / f"seed{seed}")
                earlier = cache.read_json(ckpt.FINAL) if cache.file(ckpt.FINAL).is_file() else {}
                config = copy.deepcopy(cell.config)
                config.train.seed = seed
                try:
                    final = reevaluate(run_dir, config, data, cache, earlier, label=f"{cell.name} seed {seed}", log=log)
                except WeightsMissing as exc:
                    log(f"{cell.name} seed {seed}: skipped, {exc}")
                    unweighted.append(str(run_dir))
                    continue
            cell.runs.append({"seed": seed, "run_dir": str(run_dir), "valid": final["valid"], "test": final["test"], "epochs_run": final.get("epochs_run"), "wall_seconds": final.get("wall_seconds")})
    summary = summarise(cells, seeds, reference, busy)
    summary["untrained"] = untrained
    summary["no_weights"] = sorted(set(unweighted))
    summary.update(runs_dir=str(runs), command=command, git_sha=git_sha(), machine=machine(), wall_seconds=time.perf_counter() - started, dataset=str(valid[0].config.data.path))  # type: ignore[union-attr]
    out.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_text(out / "ablation.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def run_directories(trainings: dict[tuple[str, int], RunConfig], runs: pathlib.Path, data: Any, log: Callable[[str], None]) -> dict[tuple[str, int], pathlib.Path]:
    """Each training's run directory: ``RUNS/<cell>/seed<N>`` where that exists or ``RUNS`` holds the
    training nowhere else; otherwise the directory under ``RUNS`` that already holds the same training
    (the same config up to where and how fast it runs, on data with the same fingerprint)."""
    held: dict[str, pathlib.Path] = {}
    fingerprint = ckpt.data_fingerprint(data)
    for config_file in sorted(runs.glob(f"*/seed*/{ckpt.CONFIG}")) if runs.is_dir() else []:
        run = ckpt.RunDir(config_file.parent)
        try:
            if run.dataset().get("fingerprint") == fingerprint:
                held.setdefault(training_key(run.valid_config()), run.path)
        except DiffrecError:  # a damaged run is nobody's match; training in its own folder reports it
            continue
    dirs = {}
    for (name, seed), config in trainings.items():
        own = runs / name / f"seed{seed}"
        found = held.get(training_key(config))
        if own.exists() or found is None or found == own:
            dirs[(name, seed)] = own
        else:
            log(f"{name} seed {seed}: the same training is {found}")
            dirs[(name, seed)] = found
    return dirs


def finished(run_dir: pathlib.Path, config: RunConfig) -> bool:
    """Whether ``run_dir`` holds a finished run that :func:`diffrec.runner.run_one` would reuse as
    it is (not one it would resume or extend to ``config``'s epoch budget)."""
    run = ckpt.RunDir(run_dir)
    return run.file(ckpt.FINAL).is_file() and complete(run.read_json(ckpt.FINAL), config.train.epochs)


def training_key(config: RunConfig) -> str:
    """What decides a training's result: the config without its device, threads, kernel backend
    (equal up to float rounding) and data path (the data is compared by fingerprint)."""
    raw = config.to_dict()
    raw["model"].pop("kernel_backend", None)
    for key in ("device", "num_threads"):
        raw["train"].pop(key, None)
    raw["data"].pop("path", None)
    return json.dumps(raw, sort_keys=True)


def _run_trainings(
    items: list[tuple[pathlib.Path, RunConfig, str]], data: Any, jobs: int, show_progress: bool, log: Callable[[str], None]
) -> tuple[dict[str, dict[str, Any]], list[str], dict[str, str]]:
    """Train every distinct run (``jobs`` at a time in worker processes). Runs held by another process
    are skipped (``busy``); a run that fails (diverges, refuses its data) is reported with its reason."""
    results: dict[str, dict[str, Any]] = {}
    busy: list[str] = []
    failed: dict[str, str] = {}
    if jobs <= 1:
        for run_dir, config, label in items:
            try:
                results[str(run_dir)] = run_one(config, run_dir, data, config.data.path, label=label, show_progress=show_progress, log=log)
            except DiffrecError as exc:
                if "in use by another process" in str(exc):
                    log(f"{label}: skipped, {exc}")
                    busy.append(str(run_dir))
                else:
                    log(f"{label}: failed, {exc}")
                    failed[str(run_dir)] = str(exc)
        return results, busy, failed
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(_train_job, (config.to_dict(), str(run_dir), config.data.path, label, False)) for run_dir, config, label in items]
        for future in concurrent.futures.as_completed(futures):
            run_dir, final, error = future.result()
            if error is None:
                results[run_dir] = final  # type: ignore[assignment]
            elif "in use by another process" in error:
                log(f"{run_dir}: skipped, {error}")
                busy.append(run_dir)
            else:
                log(f"{run_dir}: failed, {error}")
                failed[run_dir] = error
    return results, busy, failed


def summarise(cells: list[Cell], seeds: list[int], reference: dict[str, str] | None, busy: list[str]) -> dict[str, Any]:
    """Per cell: runs, mean / std / 95% interval per metric; against the reference: differences,
    paired t-tests and Holm-corrected p-values per metric."""
    entries: dict[str, dict[str, Any]] = {}
    for cell in cells:
        entry: dict[str, Any] = {"assignments": cell.assignments, "status": "refused" if cell.refused and not cell.runs else ("ok" if cell.runs else "incomplete")}
        if cell.refused:
            entry["reason"] = cell.refused
        entry["runs"] = cell.runs
        if cell.runs:
            entry["test"] = aggregate([r["test"] for r in cell.runs])
            entry["valid"] = aggregate([r["valid"] for r in cell.runs])
            for metric in METRICS:
                interval = ci95([r["test"][metric] for r in cell.runs])
                entry["test"][metric]["ci95"] = list(interval) if interval else None
        entries[cell.name] = entry
    ref_name = None
    if reference is not None:
        ref_name = ", ".join(f"{k}={v}" for k, v in reference.items()) or "base"
        ref = entries.get(ref_name)
        if ref is not None and ref.get("runs"):
            by_seed = {r["seed"]: r for r in ref["runs"]}
            raw: dict[str, dict[str, float | None]] = {m: {} for m in METRICS}
            for name, entry in entries.items():
                if name == ref_name or not entry.get("runs"):
                    continue
                pairs = [(by_seed[r["seed"]], r) for r in entry["runs"] if r["seed"] in by_seed]
                entry["vs_reference"] = {
                    m: {"difference": entry["test"][m]["mean"] - ref["test"][m]["mean"], "shared_seeds": len(pairs), "p": paired_t_test([b["test"][m] for _, b in pairs], [a["test"][m] for a, _ in pairs])}
                    for m in METRICS
                }
                for m in METRICS:
                    raw[m][name] = entry["vs_reference"][m]["p"]
            for m in METRICS:
                for name, p in holm(raw[m]).items():
                    entries[name]["vs_reference"][m]["p_holm"] = p
    return {"kind": KIND, "seeds": seeds, "reference": ref_name, "cells": entries, "busy": busy, "unit": "percent"}
