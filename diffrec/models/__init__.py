"""Recommender models (``model`` registry): DiffuRec and same-protocol baselines."""

from diffrec.models.base import Recommender
from diffrec.models.bert4rec import BERT4Rec
from diffrec.models.bsarec import BSARec
from diffrec.models.caser import Caser
from diffrec.models.diffurec import DiffuRec
from diffrec.models.diffusion import DiffusionRecommender
from diffrec.models.dreamrec import DreamRec
from diffrec.models.gru4rec import GRU4Rec
from diffrec.models.preferdiff import PreferDiff
from diffrec.models.sasrec import SASRec
from diffrec.models.stosa import STOSA

__all__ = ["BERT4Rec", "BSARec", "Caser", "DiffuRec", "DiffusionRecommender", "DreamRec", "GRU4Rec", "PreferDiff", "Recommender", "SASRec", "STOSA"]
