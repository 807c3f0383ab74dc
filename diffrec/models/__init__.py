"""Recommender models (``model`` registry)."""

from diffrec.models.base import Recommender
from diffrec.models.diffurec import DiffuRec

__all__ = ["DiffuRec", "Recommender"]
