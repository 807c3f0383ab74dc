"""Resolve a data path (or the word ``synthetic``) to a dataset."""

from __future__ import annotations

from diffrec.config import DataConfig
from diffrec.data.dataset import SequenceData
from diffrec.data.formats import load_dataset
from diffrec.data.synthetic import make_synthetic

SYNTHETIC = "synthetic"


def open_dataset(config: DataConfig) -> SequenceData:
    """The dataset that ``config`` describes: the built-in synthetic data, or a file read with its loader options."""
    if config.path == SYNTHETIC:
        return make_synthetic(config.synthetic_users, config.synthetic_items, config.synthetic_seed)
    return load_dataset(config.path, config)
