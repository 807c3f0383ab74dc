"""Datasets: loaders for the shipped and common formats, a synthetic dataset, batching."""

from diffrec.data.batching import Batch, EvalInputs, TrainExamples, history_batch
from diffrec.data.dataset import SequenceData
from diffrec.data.formats import load_dataset
from diffrec.data.safe_pickle import safe_load
from diffrec.data.source import SYNTHETIC, open_dataset
from diffrec.data.synthetic import make_synthetic

__all__ = [
    "SYNTHETIC",
    "Batch",
    "EvalInputs",
    "SequenceData",
    "TrainExamples",
    "history_batch",
    "load_dataset",
    "make_synthetic",
    "open_dataset",
    "safe_load",
]
