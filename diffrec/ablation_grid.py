"""The grid of ``diffrec ablate``: axes (``--grid KEY=V1,V2,...``), the reference cell, the base
config every cell starts from, and the cells, the cross product of the axes, each with the config
it is evaluated with and the config it trains with (the base plus its training axes only: cells
that differ only in inference settings share their trainings)."""

from __future__ import annotations

import copy
import itertools
import pathlib
import re
from dataclasses import dataclass, field
from typing import Any

from diffrec.config import RunConfig
from diffrec.errors import DiffrecError
from diffrec.overrides import apply_override
from diffrec.presets import RECIPES

#: settings that only inference uses: cells that differ only in them share their training
INFERENCE_SETTINGS = ("reverse_sampler", "rounding")


@dataclass
class Axis:
    key: str
    values: list[str]

    @property
    def inference_only(self) -> bool:
        head = self.key.split(".")
        head = head[1:] if head[0] == "model" and len(head) > 1 else head
        return head[0] in INFERENCE_SETTINGS or self.key.split(".")[0] == "eval"


@dataclass
class Cell:
    assignments: dict[str, str]
    train: dict[str, str]
    config: RunConfig | None = None
    #: the config the cell trains with: the base plus its training assignments only
    train_config: RunConfig | None = None
    refused: str | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.assignments.items()) or "base"


def parse_grid(texts: list[str]) -> list[Axis]:
    """``KEY=V1,V2,...`` strings -> axes; an empty list, a repeated axis or value is an error."""
    if not texts:
        raise DiffrecError("give at least one --grid KEY=V1,V2,...")
    axes: list[Axis] = []
    for text in texts:
        key, sep, raw = text.partition("=")
        key, values = key.strip(), [v.strip() for v in raw.split(",")]
        if not sep or not key:
            raise DiffrecError(f"--grid takes KEY=V1,V2,... (e.g. schedule=trunc_lin,cosine), got {text!r}")
        if not raw.strip() or any(not v for v in values):
            raise DiffrecError(f"--grid {key}: an empty value list or an empty value")
        if len(set(values)) != len(values):
            raise DiffrecError(f"--grid {key}: a value is given twice")
        if any(a.key == key for a in axes):
            raise DiffrecError(f"--grid {key} is given twice; give all its values in one --grid")
        axes.append(Axis(key, values))
    return axes


def parse_reference(text: str | None, axes: list[Axis]) -> dict[str, str] | None:
    if text is None:
        return None
    pairs = dict(p.strip().partition("=")[::2] for p in text.split(",") if p.strip())
    wanted = {a.key for a in axes}
    if set(pairs) != wanted or any(pairs[a.key] not in a.values for a in axes):
        cells = "; ".join(", ".join(f"{a.key}={v}" for a, v in zip(axes, combo)) for combo in itertools.product(*(a.values for a in axes)))
        raise DiffrecError(f"--reference {text!r} is not a cell of the grid; valid cells: {cells[:400]}")
    return {a.key: pairs[a.key] for a in axes}


def base_config(data: str, base: pathlib.Path | None, recipe: str, sets: list[str], epochs: int | None, threads: int | None) -> RunConfig:
    """The config every cell starts from: ``base`` (or the defaults), the recipe, then ``sets``."""
    config = RunConfig.load(base) if base is not None else RunConfig()
    if recipe not in RECIPES:
        raise DiffrecError(f"unknown recipe {recipe!r}; valid choices: {', '.join(RECIPES)}")
    config.data.path = data
    declared = config.model.declared()
    for key, value in RECIPES[recipe]["model"].items():
        if key in declared:
            setattr(config.model, key, value)
    for key, value in RECIPES[recipe]["train"].items():
        setattr(config.train, key, value)
    for text in sets:
        apply_override(config, *text.partition("=")[::2])
    if epochs is not None:
        config.train.epochs = epochs
    if threads is not None:
        config.train.num_threads = threads
    return config.validate()


def with_assignments(config: RunConfig, assignments: dict[str, str]) -> RunConfig:
    out = copy.deepcopy(config)
    for key, value in assignments.items():
        apply_override(out, key, value)
    return out.validate()


def build_cells(base: RunConfig, axes: list[Axis]) -> list[Cell]:
    """The cross product of the axes; each value must be valid on its own (else an input error),
    and a combination that is not is a refused cell."""
    for axis in axes:
        for value in axis.values:
            try:
                with_assignments(base, {axis.key: value})
            except DiffrecError as exc:
                raise DiffrecError(f"--grid {axis.key}={value}: {exc}") from None
    cells = []
    for combo in itertools.product(*(a.values for a in axes)):
        assignments = {a.key: v for a, v in zip(axes, combo)}
        train = {a.key: v for a, v in zip(axes, combo) if not a.inference_only}
        cell = Cell(assignments, train)
        try:
            cell.config = with_assignments(base, assignments)
            cell.train_config = with_assignments(base, train)
        except DiffrecError as exc:
            cell.refused = str(exc)
        cells.append(cell)
    return cells


def slug(assignments: dict[str, str]) -> str:
    """A folder name for a set of assignments (``base`` for none)."""
    text = "+".join(f"{k}={v}" for k, v in assignments.items()) or "base"
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", text)[:200]
