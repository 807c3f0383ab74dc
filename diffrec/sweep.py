"""Inference sweeps: evaluate one trained run at several values of a setting that needs no retraining.

``diffrec evaluate --checkpoint RUN --sweep reverse_sampler.steps=1,2,4,8,16,32`` evaluates the
run's best weights once per value (any ``--set`` key works: ``reverse_sampler.guidance``,
``reverse_sampler.eta``, ``rounding``, ``eval.seed``), timing each evaluation, and
``--save-sweep FILE`` keeps the points for ``diffrec plot --sweep FILE`` (accuracy and
seconds against the value, several runs overlaid).
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import torch

from diffrec.checkpoint import RunDir
from diffrec.errors import DiffrecError

#: marks a file written by :func:`save_sweep`, so that ``--force`` replaces only those
KIND = "diffrec evaluation sweep"


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``KEY=V1,V2,...`` -> (key, raw values)."""
    key, sep, raw = text.partition("=")
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if not sep or not key.strip() or not values:
        raise DiffrecError(f"--sweep takes KEY=V1,V2,... (e.g. reverse_sampler.steps=1,2,4), got {text!r}")
    if len(set(values)) != len(values):
        raise DiffrecError(f"--sweep {key.strip()}: a value is given twice")
    return key.strip(), values


def _plain(raw: str) -> Any:
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            continue
    return raw


def run_sweep(
    checkpoint: pathlib.Path,
    key: str,
    values: list[str],
    *,
    sets: list[str],
    data: str | None,
    split: str,
    device: torch.device,
    log: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` at every value of ``key``; the dataset is read once."""
    from diffrec.evaluation import evaluate
    from diffrec.runner import git_sha, machine
    from diffrec.building import load_run_model

    run = RunDir(checkpoint)
    points, dataset = [], None
    for raw in values:
        config, model, record = load_run_model(checkpoint, device, [*sets, f"{key}={raw}"])
        if dataset is None:
            dataset = run.open_data(config, data)
            if dataset.num_items != record["num_items"]:
                raise DiffrecError(f"the data has {dataset.num_items} items but the model was trained on {record['num_items']}")
        started = time.perf_counter()
        result = evaluate(model, dataset, split, config.eval, max_len=config.model.max_len, device=device)
        seconds = time.perf_counter() - started
        points.append({"value": _plain(raw), "metrics": result.metrics, "seconds": seconds})
        log(f"{key} = {raw}: HR@10 {result.metrics.get('HR@10', float('nan')):.2f}  NDCG@10 {result.metrics.get('NDCG@10', float('nan')):.2f}  {seconds:.1f} s")
    return {
        "kind": KIND,
        "checkpoint": str(checkpoint),
        "model": config.model.model,
        "key": key,
        "split": split,
        "protocol": config.eval.protocol,
        "users": dataset.num_users,
        "points": points,
        "sets": sets,
        "git_sha": git_sha(),
        "machine": machine(),
    }


def is_sweep_file(path: pathlib.Path) -> bool:
    try:
        return json.loads(path.read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def load_sweep(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        raise DiffrecError(f"sweep file not found: {path}")
    try:
        sweep = json.loads(path.read_text())
        if sweep.get("kind") != KIND or not sweep["points"]:
            raise KeyError("kind")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DiffrecError(f"{path} is not a sweep written by diffrec evaluate --save-sweep") from None
    return sweep
