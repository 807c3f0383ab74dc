"""DiffuRec (Li, Sun, Li, ACM TOIS 2023), composed from registry parts.

Training (paper Alg. 2): the target embedding x_0 is noised to x_t (Eq. 16),
shifted by a step embedding d_t and injected into the history with
element-wise lambda ~ N(delta, delta):  z_i = e_i + lambda_i * (x_t + d_t)
(Eq. 13). The approximator reconstructs x0_hat from z and the loss compares
x0_hat with the target over the whole catalogue.

Inference (Alg. 1): x_T ~ N(0, I) is reversed step by step, each step
re-injecting the current x_t into the history, and the final x_0 is rounded
to items by inner product (Eq. 21).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diffrec.config import ModelConfig
from diffrec.layers import Dropout
from diffrec.data.batching import Batch
from diffrec.kernels import noise_inject
from diffrec.models.base import Recommender
from diffrec.errors import ConfigError
from diffrec.registry import register, registry
from diffrec.samplers import UniformSampler
from diffrec.schedules import GaussianDiffusion


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: (B,) -> (B, dim), [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)  # (half,)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb  # (B, dim)


@register("model", "diffurec")
class DiffuRec(Recommender):
    """DiffuRec: item distributions via a diffused target injected into the history."""

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        d = config.hidden_size
        self.item_emb = nn.Embedding(num_items + 1, d)  # (N + 1, d); row 0 = padding, no padding_idx (public code)
        nn.init.normal_(self.item_emb.weight, std=config.emb_init_std)
        self.pos_emb = nn.Embedding(config.max_len, d) if config.position_embedding else None
        if self.pos_emb is not None:  # on the items' scale, so that positions do not drown a small-std item table
            nn.init.normal_(self.pos_emb.weight, std=config.emb_init_std)
        self.emb_dropout = Dropout(config.emb_dropout)
        self.emb_norm = nn.LayerNorm(d, eps=1e-12)
        self.step_mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d))
        self.approximator = registry("approximator").build_from(config.approximator, config=config)
        self.out_dropout = Dropout(config.dropout)
        self.out_norm = nn.LayerNorm(d, eps=1e-12)

        schedule = registry("schedule").build_from(config.schedule)
        self.diffusion = GaussianDiffusion(schedule, config.diffusion_steps)
        backend = None if config.kernel_backend == "auto" else config.kernel_backend
        self.loss_fn = registry("loss").build_from(config.loss, over_padding=config.ce_over_padding, backend=backend, config=config)
        self.rounding = registry("rounding").build_from(config.rounding, backend=backend, config=config)
        self.timestep_sampler = registry("timestep_sampler").build_from(config.timestep_sampler, num_steps=config.diffusion_steps)
        if not getattr(self.loss_fn, "per_example", True) and not isinstance(self.timestep_sampler, UniformSampler):
            raise ConfigError(f"the {config.loss} loss gives only a batch mean; the {config.timestep_sampler} sampler needs per-example losses")
        self.reverse_sampler = registry("reverse_sampler").build_from(config.reverse_sampler, config=config)

    @property
    def trims_padding_exactly(self) -> bool:
        # the official mask lets real positions attend to padding keys; those are interchangeable
        # (so trimming is exact) only while no position embedding tells them apart
        return not (self.config.attention_mask == "official" and self.config.position_embedding)

    # ---------------------------------------------------------------- pieces
    def encode_history(self, batch: Batch) -> torch.Tensor:
        """LayerNorm(Dropout(E[seq] (+ positions))): (B, L, d)."""
        h = self.item_emb(batch.seq)  # (B, L, d)
        if self.pos_emb is not None:
            L = batch.seq.shape[1]
            # positions as in the full max_len window, so that trimmed batches see the same ids
            pos = batch.pad_extra[:, None] + torch.arange(L, device=h.device)[None, :]  # (B, L)
            h = h + self.pos_emb(pos)
        return self.emb_norm(self.emb_dropout(h))

    def denoise(self, h: torch.Tensor, batch: Batch, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x0_hat = f_theta(history, x_t, t): (B, d)."""
        x = x_t + self.step_mlp(timestep_embedding(self.diffusion.scale_timesteps(t), x_t.shape[-1]))  # (B, d)
        seed_device = generator.device if generator is not None else torch.device("cpu")
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=seed_device))
        z = noise_inject(h, x, self.config.delta, seed, backend=self.backend)  # (B, L, d), Eq. 13
        rep = self.approximator(z, batch.mask, batch.pad_extra)  # (B, d)
        return self.out_norm(self.out_dropout(rep))

    @property
    def backend(self) -> str | None:
        """Kernel backend: None lets each op choose (Triton for CUDA tensors)."""
        return None if self.config.kernel_backend == "auto" else self.config.kernel_backend

    def diffuse_target(self, targets: torch.Tensor) -> torch.Tensor:
        """x_0 from the target embedding: e itself (public code) or a draw from q(x_0 | e) (paper Eq. 15)."""
        e = self.item_emb(targets)  # (B, d)
        if not self.config.x0_from_embedding:
            return e
        a0 = float(1.0 - self.diffusion.betas[0])
        return math.sqrt(a0) * e + math.sqrt(1.0 - a0) * torch.randn_like(e)

    # ------------------------------------------------------------- contract
    def calculate_loss(self, batch: Batch) -> torch.Tensor:
        h = self.encode_history(batch)  # (B, L, d)
        x0 = self.diffuse_target(batch.target)  # (B, d)
        t, weights = self.timestep_sampler.sample(x0.shape[0], x0.device)  # (B,), (B,)
        x_t = self.diffusion.add_noise(x0, torch.randn_like(x0), t)  # (B, d)
        x0_hat = self.denoise(h, batch, x_t, t)
        losses = self.loss_fn(x0_hat, self.item_emb.weight, batch.target)  # (B,), or () for a fused batch mean
        if losses.dim() == 0:
            return losses
        self.timestep_sampler.update(t, losses)
        return (losses * weights).mean()

    @torch.no_grad()
    def reverse(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Run the reverse chain from x_T ~ N(0, I): (B, d)."""
        h = self.encode_history(batch)
        B, d = h.shape[0], h.shape[-1]
        x_T = torch.randn((B, d), generator=generator, device=h.device, dtype=h.dtype)
        return self.reverse_sampler.sample(lambda x, t: self.denoise(h, batch, x, t, generator), self.diffusion, x_T, generator)

    @torch.no_grad()
    def full_sort_predict(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.rounding.scores(self.reverse(batch, generator), self.item_emb.weight)  # (B, N + 1)

    @torch.no_grad()
    def recommend(self, batch: Batch, k: int, exclude: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rounding.topk(self.reverse(batch, generator), self.item_emb.weight, k, exclude)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {f"timestep_sampler.{k}": v for k, v in self.timestep_sampler.state_dict().items()}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        prefix = "timestep_sampler."
        own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if own:
            self.timestep_sampler.load_state_dict(own)
