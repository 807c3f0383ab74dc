"""Approximators f_theta: noised history -> reconstructed target representation (paper Sec. 4.2.2)."""

from diffrec.approximators.base import Approximator
from diffrec.approximators.bsarec import BSARecApproximator
from diffrec.approximators.bsarec_causal import CausalBSARecApproximator
from diffrec.approximators.gru import GRUApproximator
from diffrec.approximators.mlp import MLPApproximator
from diffrec.approximators.transformer import TransformerApproximator

__all__ = ["Approximator", "BSARecApproximator", "CausalBSARecApproximator", "GRUApproximator", "MLPApproximator", "TransformerApproximator"]
