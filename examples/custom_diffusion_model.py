"""A diffusion recommender of your own, written by import: a GRU condition and epsilon prediction.

The history is read by the registered GRU approximator into a condition c; the denoiser
predicts the noise from [x_t, c, step] and trains DDPM's L_simple (MSE to the noise).
Epsilon prediction needs fixed targets: with learnable item embeddings L_simple can shrink
them all to one point, so the items are frozen random codes and the history has embeddings
of its own. Train and evaluate it from the command line:

    diffrec train --plugin examples/custom_diffusion_model.py --model gru_eps --out runs/gru_eps
    diffrec evaluate --checkpoint runs/gru_eps --set reverse_sampler.steps=4
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from diffrec import register, registry
from diffrec.models.diffurec import timestep_embedding
from diffrec.models.diffusion import DiffusionRecommender, DiffusionSettings
from diffrec.params import PartRef, setting


@dataclasses.dataclass
class GRUEpsSettings(DiffusionSettings):
    prediction_type: str = setting("epsilon", "predict the noise")
    schedule: PartRef = setting("cosine", "noise schedule", part="schedule")
    reverse_sampler: PartRef = setting({"name": "ddim", "steps": 10}, "reverse sampler", part="reverse_sampler")


@register("model", "gru_eps")
class GRUEps(DiffusionRecommender):
    """A GRU over the history conditions an MLP that predicts the noise; items are frozen random codes."""

    Settings = GRUEpsSettings
    default_loss = "mse"

    def __init__(self, config, num_items: int) -> None:
        super().__init__(config, num_items)
        d = config.hidden_size
        self.codes = nn.Embedding(num_items + 1, d).requires_grad_(False)  # x_0 of each item, N(0, 1)
        self.history_emb = nn.Embedding(num_items + 1, d)
        self.gru = registry("approximator").build("gru", config=config)  # padding packed away: trimming is exact
        self.step = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.net = nn.Sequential(nn.Linear(3 * d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d))

    def item_table(self) -> torch.Tensor:
        return self.codes.weight  # (N + 1, d)

    def condition(self, batch) -> torch.Tensor:
        return self.gru(self.history_emb(batch.seq), batch.mask, batch.pad_extra)  # (B, d)

    def denoiser(self, x_t, t, condition, batch, generator=None, unconditional=False) -> torch.Tensor:
        step = self.step(timestep_embedding(self.diffusion.scale_timesteps(t), x_t.shape[-1]))  # (B, d)
        return self.net(torch.cat([x_t, condition, step], dim=-1))  # (B, d): the predicted noise
