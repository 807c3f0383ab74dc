"""DreamRec (Yang et al., "Generate What You Prefer: Reshaping Sequential Recommendation via Guided Diffusion", NeurIPS 2023).

Instead of classifying the next item, DreamRec generates the embedding of the item the
user would prefer, guided by the history:

- guidance: a causal Transformer encodes the history; its last position is the
  guidance vector c (Sec. 3.2);
- denoiser: f(x_t, t, c) = MLP([x_t, c, d_t]), with d_t a sinusoidal step embedding through
  a two-layer GELU network; it predicts x_0 (Eq. 9);
- objective: MSE between x0_hat and the target embedding (Eq. 10, the ``mse`` loss);
- classifier-free guidance: in training c is replaced by a learned null vector with
  probability ``p_uncond``; at sampling x0 = (1 + w) f(x_t, c) - w f(x_t, null) (Eq. 11),
  the reverse sampler's ``guidance`` w (DreamRec samples the DDPM posterior, which is
  ``ddim`` with every step and eta = 1);
- rounding: inner product with the item embeddings;
- training on every prefix (the authors' code) or, as the causal encoder allows, on sequence
  examples: the guidance at every position is denoised toward the item after it.

Defaults follow the authors' code: d = 64, one block and one head, item and null
embeddings drawn N(0, 1), the VP ("exp") schedule with T = 200, w = 2, p_uncond = 0.1.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from diffrec.config import ModelConfig
from diffrec.data.batching import Batch
from diffrec.errors import ConfigError
from diffrec.models.baselines import TransformerBlock, attention_mask, window_positions
from diffrec.models.diffurec import timestep_embedding
from diffrec.models.diffusion import DiffusionRecommender, DiffusionSettings
from diffrec.params import PartRef, setting
from diffrec.registry import register


@dataclasses.dataclass
class DreamRecSettings(DiffusionSettings):
    """DreamRec's settings (defaults: the authors' code)."""

    schedule: PartRef = setting("exp", "noise schedule of the forward process", part="schedule")
    diffusion_steps: int = setting(200, "diffusion steps T")
    reverse_sampler: PartRef = setting({"name": "ddim", "steps": 200, "eta": 1.0, "guidance": 2.0}, "the DDPM posterior, guided", part="reverse_sampler")
    p_uncond: float = setting(0.1, "probability that training replaces the guidance by the learned null vector")
    denoiser_layers: int = setting(1, "layers of the denoiser MLP: 1 (the authors' mlp1) or 2 (mlp2)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.p_uncond < 1.0:
            raise ConfigError(f"p_uncond must lie in [0, 1), got {self.p_uncond}")
        if self.denoiser_layers not in (1, 2):
            raise ConfigError(f"denoiser_layers must be 1 or 2, got {self.denoiser_layers}")


@register("model", "dreamrec")
class DreamRec(DiffusionRecommender):
    """DreamRec: generates the preferred item's embedding, guided by the encoded history."""

    Settings = DreamRecSettings
    supports_guidance = True
    supports_sequence_examples = True
    default_loss = "mse"

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        s, d = self.settings, config.hidden_size
        self.item_emb = nn.Embedding(num_items + 1, d)  # (N + 1, d); row 0 = padding (masked out of attention)
        nn.init.normal_(self.item_emb.weight, std=s.emb_init_std)
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.emb_dropout = nn.Dropout(config.emb_dropout)
        self.blocks = nn.ModuleList(TransformerBlock(d, config.num_heads, d, config.dropout, "relu", True, 1e-8) for _ in range(config.num_blocks))
        self.final_norm = nn.LayerNorm(d)
        self.null = nn.Parameter(torch.randn(d))  # the unconditional guidance
        self.step_mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        hidden = [nn.Linear(3 * d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)] if s.denoiser_layers == 2 else [nn.Linear(3 * d, d)]
        self.denoise_mlp = nn.Sequential(*hidden)

    def item_table(self) -> torch.Tensor:
        return self.item_emb.weight  # (N + 1, d)

    def hidden(self, batch: Batch) -> torch.Tensor:
        """The causal encoder's states before the final norm: (B, L, d), each from the items up to it."""
        x = self.emb_dropout(self.item_emb(batch.seq) + self.pos_emb(window_positions(batch)))  # (B, L, d)
        allowed = attention_mask(batch.mask, causal=True)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, allowed)
        return x

    def encode(self, batch: Batch) -> torch.Tensor:
        """The guidance vector: the causal encoder's output at the last position, (B, d)."""
        return self.final_norm(self.hidden(batch)[:, -1])

    def condition(self, batch: Batch) -> torch.Tensor:
        return self.drop_guidance(self.encode(batch))  # (B, d)

    def drop_guidance(self, c: torch.Tensor) -> torch.Tensor:
        """In training, each row's guidance replaced by the null vector with probability p_uncond: (n, d)."""
        if self.training and self.settings.p_uncond > 0:
            drop = torch.rand(c.shape[0], 1, device=c.device) < self.settings.p_uncond  # (n, 1)
            c = torch.where(drop, self.null.expand_as(c), c)
        return c

    def training_pairs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix examples: (c, target); sequence examples: the guidance at every real position and
        the item that follows it, (n, d) and (n,) (the encoder is causal, so position p sees items <= p)."""
        if batch.next_items is None:
            return self.condition(batch), batch.target
        real = batch.next_items > 0  # (B, L)
        return self.drop_guidance(self.final_norm(self.hidden(batch)[real])), batch.next_items[real]

    def denoiser(self, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor, batch: Batch, generator: torch.Generator | None = None, unconditional: bool = False) -> torch.Tensor:
        """x0_hat = MLP([x_t, c, d_t]): (B, d)."""
        c = self.null.expand_as(x_t) if unconditional else condition
        step = self.step_mlp(timestep_embedding(t.float(), x_t.shape[-1]))  # (B, d)
        return self.denoise_mlp(torch.cat([x_t, c, step], dim=-1))
