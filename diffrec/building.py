"""Building a configured model and loading a saved run's: the device, the seeds, the model
class from the registry (with the config's plugins), and a run directory's best weights."""

from __future__ import annotations

import pathlib
import random
from typing import Any

import numpy as np
import torch

from diffrec import checkpoint as ckpt
from diffrec.config import RunConfig
from diffrec.errors import DiffrecError
from diffrec.models.base import Recommender
from diffrec.registry import load_builtin_parts, load_plugin, registry


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DiffrecError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DiffrecError("device 'cuda' was requested but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sequence_example_models() -> list[str]:
    """Registered models that train on sequence examples (a target at every position)."""
    load_builtin_parts()
    return [name for name in registry("model").names() if getattr(registry("model").get(name), "supports_sequence_examples", False)]


def build_model(config: RunConfig, num_items: int) -> Recommender:
    """The configured model, with built-in parts and the config's plugins registered."""
    load_builtin_parts()
    for plugin in config.plugins:
        load_plugin(plugin)
    model_cls = registry("model").get(config.model.model)
    return model_cls(config.model, num_items)


def load_run_model(run_dir: str | pathlib.Path, device: torch.device, sets: list[str] | tuple[str, ...] = ()) -> tuple[RunConfig, Recommender, dict[str, Any]]:
    """The best model of a finished (or running) run directory; ``sets`` (``KEY=VALUE``, see
    :mod:`diffrec.overrides`) change the run's config first, e.g. ``reverse_sampler.steps=4``."""
    from diffrec.overrides import apply_all

    run = ckpt.RunDir(run_dir)
    if not run.path.is_dir():
        raise DiffrecError(f"{run.path} is not a run directory" if run.path.exists() else f"run directory not found: {run.path}")
    config = apply_all(run.valid_config(), list(sets))
    record = run.dataset()
    model = build_model(config, int(record["num_items"])).to(device)
    weights = run.file(ckpt.BEST)
    if not weights.is_file():
        raise DiffrecError(f"{run.path} has no {ckpt.BEST} yet (no validation has run)")
    ckpt.load_model_tensors(model, ckpt.load_tensors(weights), weights)
    model.eval()
    return config, model, record

