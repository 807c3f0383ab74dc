"""PreferDiff (Liu et al., "Preference Diffusion for Recommendation", ICLR 2025).

DreamRec's guided denoiser trained with a preference-aware objective. Besides
reconstructing the positive item, the model should reconstruct a negative worse: with the
positive x_0^+ and a negative x_0^- noised at the same step t,

    e^+ = err(f(x_t^+, t, c), x_0^+),   e^- = err(f(x_t^-, t, c), x_0^-),
    L = lambda e^+ + (1 - lambda) (-log sigma(-gamma (e^+ - e^-))),

a BPR loss on the denoising errors (the paper's L_BPR-Diff, mixed with the reconstruction
term as its Eq. 13 does). The negative is the centroid of the other targets in the batch
(the authors' in-batch sampling, averaged over the negatives). ``err`` is the ``loss`` part
applied to the centroid (``mse``, the paper's L_simple, or ``cosine``, the authors'
best). The authors take the sigmoid of batch-mean errors; here each example has its own
term, so that timestep samplers see per-example losses.

Defaults follow the authors' configuration: T = 2000 linear betas from 1e-4 to 0.02 (not
rescaled), gamma = 5, lambda = 0.5, guidance w = 4 and p_uncond = 0.1; their sampler is
deterministic DDIM on every 100th step (``ddim`` with 21 steps).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from diffrec.config import ModelConfig
from diffrec.data.batching import Batch
from diffrec.errors import ConfigError
from diffrec.models.dreamrec import DreamRec, DreamRecSettings
from diffrec.params import PartRef, part_name, setting
from diffrec.registry import register


@dataclasses.dataclass
class PreferDiffSettings(DreamRecSettings):
    """PreferDiff's settings (defaults: the authors' configuration)."""

    schedule: PartRef = setting({"name": "linear", "rescale": False}, "noise schedule of the forward process", part="schedule")
    diffusion_steps: int = setting(2000, "diffusion steps T")
    reverse_sampler: PartRef = setting({"name": "ddim", "steps": 21, "guidance": 4.0}, "deterministic DDIM, guided", part="reverse_sampler")
    lamda: float = setting(0.5, "weight of the reconstruction term against the preference term")
    gamma: float = setting(5.0, "sharpness of the preference term's sigmoid")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.lamda <= 1.0 or self.gamma <= 0:
            raise ConfigError(f"need lamda in [0, 1] and gamma > 0, got {self.lamda}, {self.gamma}")


@register("model", "preferdiff")
class PreferDiff(DreamRec):
    """PreferDiff: DreamRec's guided denoiser with a BPR loss on the denoising errors of a positive and a negative."""

    Settings = PreferDiffSettings
    #: the in-batch negatives compare every pair of examples; a target at every position would square that
    supports_sequence_examples = False
    #: the reconstruction errors the preference term compares (per example, against any target vector)
    errors = ("mse", "cosine")

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        if part_name(config.loss) not in self.errors:
            raise ConfigError(f"preferdiff compares reconstruction errors; its loss must be one of {', '.join(self.errors)}, got {part_name(config.loss)}")

    def negatives(self, batch: Batch) -> torch.Tensor:
        """The centroid of the other targets in the batch (other items only): (B, d)."""
        e = self.target_x0(batch.target)  # (B, d)
        other = (batch.target[None, :] != batch.target[:, None]).to(e.dtype)  # (B, B)
        count = other.sum(1, keepdim=True)
        centroid = other @ e / count.clamp(min=1)
        return torch.where(count > 0, centroid, e)  # a batch of one item has no negative: no preference signal

    def calculate_loss(self, batch: Batch) -> torch.Tensor:
        c = self.condition(batch)
        x0_pos, x0_neg = self.target_x0(batch.target), self.negatives(batch)  # (B, d) each
        t, weights = self.timestep_sampler.sample(x0_pos.shape[0], x0_pos.device)
        x_pos = self.diffusion.add_noise(x0_pos, torch.randn_like(x0_pos), t)
        x_neg = self.diffusion.add_noise(x0_neg, torch.randn_like(x0_neg), t)
        rows = torch.arange(len(batch), device=x0_neg.device)
        err_pos = self.loss_fn(self.predict_x0(x_pos, t, c, batch), self.item_table(), batch.target)  # (B,)
        err_neg = self.loss_fn(self.predict_x0(x_neg, t, c, batch), x0_neg, rows)  # the centroid as a one-row table per example
        s = self.settings
        losses = s.lamda * err_pos - (1.0 - s.lamda) * F.logsigmoid(-s.gamma * (err_pos - err_neg))  # (B,)
        self.timestep_sampler.update(t, losses)
        return (losses * weights).mean()
