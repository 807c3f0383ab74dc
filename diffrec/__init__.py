"""diffrec: diffusion models for sequential recommendation.

Parts (schedules, approximators, losses, roundings, samplers, models) live in
one registry; compose them through :class:`diffrec.config.RunConfig` or build
new ones with ``@register(kind, name)``.
"""

from diffrec.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
from diffrec.errors import DataError, DiffrecError
from diffrec.registry import KINDS, Registry, list_parts, register, registry

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "DataConfig",
    "DataError",
    "DiffrecError",
    "EvalConfig",
    "ModelConfig",
    "Registry",
    "RunConfig",
    "TrainConfig",
    "list_parts",
    "register",
    "registry",
]
