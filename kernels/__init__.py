"""Fused kernels for diffusion sequential recommendation, each with a PyTorch twin.

* :func:`noise_inject` - ``z = h + λ ⊙ x[:, None, :]`` with λ ~ N(delta, delta) drawn in the
  kernel from a seed and regenerated in the backward, never stored;
* :func:`inner_product_topk` - top-K of ``queries @ items.T`` streamed over item tiles (no B×N
  score matrix), with shared or per-query exclusions;
* :func:`linear_cross_entropy` - mean cross-entropy of ``queries @ items.T`` with an online
  log-sum-exp and a recomputing backward (no B×N logits).

Every op takes ``backend=None | "triton" | "torch"``: None picks Triton for CUDA tensors and
the PyTorch twin otherwise; the environment variable ``DIFFREC_KERNELS=torch|triton`` overrides
that automatic choice (see :mod:`diffrec.kernels.dispatch`). Importing this package never
imports Triton; the Triton kernels load on their first use.

Inside ``torch.autocast`` the ops cast their inputs as autocast would (the matmul ops to the
autocast dtype, the noise injection to the promoted dtype) and run with autocast off; see
:mod:`diffrec.kernels.dispatch`. On CUDA the Triton kernels autotune their block sizes once
per shape family; ``DIFFREC_AUTOTUNE=0`` runs the default configuration instead (see
:mod:`diffrec.kernels._triton_common`).
"""

from ._triton_available import interpreter_enabled, triton_available
from .dispatch import (
    BACKENDS,
    ENV_VAR,
    BackendUnavailableError,
    KernelInputError,
    resolve_backend,
)
from .linear_ce import linear_cross_entropy
from .noise import noise_inject
from .topk import inner_product_topk

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "BackendUnavailableError",
    "KernelInputError",
    "inner_product_topk",
    "interpreter_enabled",
    "linear_cross_entropy",
    "noise_inject",
    "resolve_backend",
    "triton_available",
]
