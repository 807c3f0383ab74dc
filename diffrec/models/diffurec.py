"""DiffuRec (Li, Sun, Li, ACM TOIS 2023), composed from registry parts.

Training (paper Alg. 2): the target embedding x_0 is noised to x_t (Eq. 16),
shifted by a step embedding d_t and injected into the history with
element-wise lambda ~ N(delta, delta):  z_i = e_i + lambda_i * (x_t + d_t)
(Eq. 13). The approximator reconstructs x0_hat from z and the loss compares
x0_hat with the target over the whole catalogue.

Inference (Alg. 1): x_T ~ N(0, I) is reversed step by step, each step
re-injecting the current x_t into the history, and the final x_0 is rounded
to items by inner product (Eq. 21).

On the diffusion base (:mod:`diffrec.models.diffusion`) DiffuRec supplies its two
ideas: the condition is the encoded history itself, and the denoiser injects x_t into
that history and lets the approximator reconstruct x_0.

``injection = "own_position"`` (not in the paper) gives each history position the noised
embedding of *its own* next item instead of the target's, z_i = e_i + lambda_i * (x_t^(i) + d_t^(i)),
with a step t^(i) of its own. With a causal approximator, position i then sees the history up to
i and a noised version of item i + 1 only, so that every position of a sequence trains at once
(``--examples sequence``, as SASRec and BSARec train). For the last position (the prediction) x_t
is the chain's current state; the history's positions carry their known next items noised at a
random step, in training and at inference alike.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
from torch import nn

from diffrec.config import ModelConfig
from diffrec.data.batching import Batch
from diffrec.errors import ConfigError
from diffrec.kernels import noise_inject
from diffrec.layers import Dropout, DropoutRNG
from diffrec.models.diffusion import DiffusionRecommender, DiffusionSettings
from diffrec.params import PartRef, part_name, setting
from diffrec.registry import register, registry


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: (B,) -> (B, dim), [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)  # (half,)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb  # (B, dim)


@dataclasses.dataclass
class DiffuRecSettings(DiffusionSettings):
    """DiffuRec's settings (defaults: the public code)."""

    approximator: PartRef = setting("transformer", "the network that reconstructs x_0 from the noised history", part="approximator")
    delta: float = setting(0.001, "lambda ~ N(delta, delta) element-wise over the history (Eq. 13)")
    attention_mask: Literal["official", "key_padding", "causal"] = setting(
        "official", "official: the public code's mask (padding query rows blanked, bidirectional); key_padding; causal"
    )
    position_embedding: bool = setting(False, "add learned position embeddings (commented out in the public code)")
    x0_from_embedding: bool = setting(False, "the paper's extra step x_0 ~ q(x_0 | e) = N(sqrt(alpha_0) e, (1 - alpha_0) I)")
    dropout_rng: DropoutRNG = setting(
        "torch", "dropout masks from torch's generator (the reference) or a counter-based hash (same Bernoulli masks, cheaper)"
    )
    output_dropout: bool = setting(
        True, "dropout at the approximator's rate on x0_hat before its LayerNorm (the public code); false: none, as SASRec and BSARec score their final states"
    )
    injection: Literal["all", "own_position"] = setting(
        "all", "all: x_t into every history position (Eq. 13); own_position: each position its own next item noised (causal approximators; trains on sequence examples)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.delta < 0:
            raise ConfigError(f"delta must be >= 0, got {self.delta}")
        if self.prediction_type != "x0":
            raise ConfigError("DiffuRec predicts x_0 (its loss rounds x0_hat over the catalogue); prediction_type must be x0")


@register("model", "diffurec")
class DiffuRec(DiffusionRecommender):
    """DiffuRec: item distributions via a diffused target injected into the history."""

    Settings = DiffuRecSettings

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        s, d = self.settings, config.hidden_size
        self.item_emb = nn.Embedding(num_items + 1, d)  # (N + 1, d); row 0 = padding, no padding_idx (public code)
        nn.init.normal_(self.item_emb.weight, std=s.emb_init_std)
        self.pos_emb = nn.Embedding(config.max_len, d) if s.position_embedding else None
        if self.pos_emb is not None:  # on the items' scale, so that positions do not drown a small-std item table
            nn.init.normal_(self.pos_emb.weight, std=s.emb_init_std)
        self.emb_dropout = Dropout(config.emb_dropout, s.dropout_rng)
        self.emb_norm = nn.LayerNorm(d, eps=1e-12)
        self.step_mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d))
        self.approximator = registry("approximator").build(s.approximator, config=config, dropout_rng=s.dropout_rng)
        self.out_dropout = Dropout(config.dropout if s.output_dropout else 0.0, s.dropout_rng)
        self.out_norm = nn.LayerNorm(d, eps=1e-12)
        if s.injection == "own_position" and not self.approximator.causal:
            causal = [name for name in registry("approximator").names() if getattr(registry("approximator").get(name), "causal", False) is True]
            raise ConfigError(
                f"injection=own_position needs a causal approximator: {', '.join(causal)}, or transformer with attention_mask=causal "
                f"(got {part_name(s.approximator)} with attention_mask={s.attention_mask})"
            )

    @classmethod
    def takes_sequence_examples(cls, config: ModelConfig) -> bool:
        """Sequence examples train every position at once: with ``injection = own_position`` only
        (so the class says False, and lists of the models that always take them leave DiffuRec out)."""
        return config.injection == "own_position"

    #: why a DiffuRec with the default injection refuses sequence examples
    sequence_examples_hint = "DiffuRec trains on sequence examples with --set injection=own_position and a causal approximator (e.g. --set attention_mask=causal)"

    @property
    def trims_padding_exactly(self) -> bool:
        if getattr(self.approximator, "reads_padding", False):  # e.g. a DFT over the whole window
            return False
        # the official mask lets real positions attend to padding keys; those are interchangeable
        # (so trimming is exact) only while no position embedding tells them apart
        return not (self.settings.attention_mask == "official" and self.settings.position_embedding)

    def item_table(self) -> torch.Tensor:
        return self.item_emb.weight  # (N + 1, d)

    def condition(self, batch: Batch) -> torch.Tensor:
        """The history h = LayerNorm(Dropout(E[seq] (+ positions))): (B, L, d)."""
        h = self.item_emb(batch.seq)  # (B, L, d)
        if self.pos_emb is not None:
            L = batch.seq.shape[1]
            # positions as in the full max_len window, so that trimmed batches see the same ids
            pos = batch.pad_extra[:, None] + torch.arange(L, device=h.device)[None, :]  # (B, L)
            h = h + self.pos_emb(pos)
        return self.emb_norm(self.emb_dropout(h))

    def training_pairs(self, batch: Batch) -> tuple[torch.Tensor | tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Prefix examples: the history and the target. Sequence examples: the history with the
        positions that have a next item, (h, real), and those items (n,)."""
        if batch.next_items is None:
            return self.condition(batch), batch.target
        real = batch.next_items > 0  # (B, L)
        return (self.condition(batch), real), batch.next_items[real]

    def denoiser(self, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | tuple[torch.Tensor, torch.Tensor], batch: Batch, generator: torch.Generator | None = None, unconditional: bool = False) -> torch.Tensor:
        """x0_hat = f_theta(history, x_t, t): x_t plus its step embedding, injected into the history: (B, d)
        (sequence examples: (n, d), one per position with a next item)."""
        x = x_t + self._step(t)  # (B, d) or (n, d)
        if self.settings.injection == "own_position":
            return self._denoise_own_position(x, condition, batch, generator)
        seed_device = generator.device if generator is not None else torch.device("cpu")
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=seed_device))
        z = noise_inject(condition, x, self.settings.delta, seed, backend=self.backend)  # (B, L, d), Eq. 13
        rep = self.approximator(z, batch.mask, batch.pad_extra)  # (B, d)
        return self.out_norm(self.out_dropout(rep))

    def _step(self, t: torch.Tensor) -> torch.Tensor:
        """The step embedding d_t: (n,) -> (n, d)."""
        return self.step_mlp(timestep_embedding(self.diffusion.scale_timesteps(t), self.config.hidden_size))

    def _denoise_own_position(self, x: torch.Tensor, condition: torch.Tensor | tuple[torch.Tensor, torch.Tensor], batch: Batch, generator: torch.Generator | None) -> torch.Tensor:
        """``injection = own_position``: each position carries its own next item's noised embedding."""
        if isinstance(condition, tuple):  # sequence examples: x holds every real position's own x_t + d_t
            h, real = condition  # (B, L, d), (B, L)
            own = torch.zeros_like(h).masked_scatter(real[..., None], x)  # (B, L, d)
        else:  # the last position predicts; the history's positions carry their known next items
            h, real = condition, None
            own = torch.cat([self._teacher(batch, generator), x[:, None, :]], dim=1)  # (B, L, d)
        lam = self._draw((*h.shape,), generator, h).mul_(self.settings.delta).add_(self.settings.delta)  # λ ~ N(δ, δ), (B, L, d)
        z = h + lam * own  # Eq. 13 per position
        if real is None:
            rep = self.approximator(z, batch.mask, batch.pad_extra)  # (B, d)
        else:
            rep = self.approximator.all_positions(z, batch.mask, batch.pad_extra)[real]  # (n, d)
        return self.out_norm(self.out_dropout(rep))

    def _teacher(self, batch: Batch, generator: torch.Generator | None) -> torch.Tensor:
        """The history positions' own inputs: item i + 1 noised at a uniform random step, plus its
        step embedding, at every position whose next item is in the history (zeros elsewhere): (B, L - 1, d)."""
        nxt = batch.seq[:, 1:]  # (B, L - 1): each position's next item; 0 where the position is padding
        has_next = batch.seq[:, :-1] > 0  # (B, L - 1)
        e = self.item_emb(nxt[has_next])  # (m, d)
        t = self._randint(self.diffusion.num_steps, (e.shape[0],), generator, e.device)  # (m,)
        x = self.diffusion.add_noise(e, self._draw(tuple(e.shape), generator, e), t) + self._step(t)  # (m, d)
        return torch.zeros(*nxt.shape, e.shape[-1], device=e.device, dtype=e.dtype).masked_scatter(has_next[..., None], x)

    @staticmethod
    def _draw(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
        """Standard normals from ``generator`` (the global one when None), on ``like``'s device."""
        where = generator.device if generator is not None else like.device
        return torch.randn(shape, generator=generator, device=where, dtype=like.dtype).to(like.device)

    @staticmethod
    def _randint(high: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        where = generator.device if generator is not None else device
        return torch.randint(0, high, shape, generator=generator, device=where).to(device)

    def target_x0(self, targets: torch.Tensor) -> torch.Tensor:
        """x_0 from the target embedding: e itself (public code) or a draw from q(x_0 | e) (paper Eq. 15)."""
        e = self.item_emb(targets)  # (B, d)
        if not self.settings.x0_from_embedding:
            return e
        a0 = float(1.0 - self.diffusion.betas[0])
        return math.sqrt(a0) * e + math.sqrt(1.0 - a0) * torch.randn_like(e)
