"""STOSA (Fan et al., "Sequential Recommendation via Stochastic Self-Attention", WWW 2022).

Every item is an elliptical Gaussian: a mean embedding and a diagonal
covariance embedding made positive by ``elu(.) + 1``. Two streams, mean and
covariance, each with learned absolute positions, LayerNorm and dropout, pass
through ``num_blocks`` causal *Wasserstein self-attention* blocks:
query/key/value Gaussians come from linear maps of the two streams, the
attention logit of a pair is the negative squared 2-Wasserstein distance
between the query and key Gaussians (scaled by 1/sqrt(d_head)),

    W2^2(N(m1, S1), N(m2, S2)) = |m1 - m2|^2 + |S1^(1/2) - S2^(1/2)|^2   (diagonal S),

the mean output averages the value means with the weights A and the covariance
output the value covariances with A^2 (a weighted sum of independent
Gaussians). Output projections, residuals and post-LN, and a GELU feed-forward
of width 4d run on both streams; the covariance stream leaves each block
through ``elu(.) + 1``. The last position's Gaussian is the sequence's; item i
scores ``-W2^2(sequence, item i)``. With ``--examples sequence`` every position's
Gaussian scores the item after it, as in the authors' training.

That score is an inner product of lifted vectors,
``[m, s, 1, -|m|^2 - |s|^2]`` for the sequence and
``[2m_i, 2s_i, -|m_i|^2 - |s_i|^2, 1]`` for the item (s = sqrt of the
covariance), so every registered loss applies: ``ce`` is the softmax over
``-W2^2``, ``bpr`` is STOSA's ranking loss ``-log sigma(d- - d+)``.
``bce`` fits badly: a score ``-W2^2`` is never positive, so sigma(s+) <= 1/2.

Native objective (``--loss bpr``, ``options["objective"] = "native"``): the
loss plus ``options["pvn_weight"]`` (default 0.005, a small weight: tune it)
times the positive-negative regulariser ``max(0, d(seq, pos) - d(pos, neg))``,
which asks the target to sit closer to the sequence than to the negative. The
regulariser shares the sampled negative of ``bpr``/``bce`` (with ``ce`` it
draws its own). ``objective = "next"`` drops the regulariser.
``options["attn_dropout"]`` (default 0.1) drops attention weights; ``config.dropout``
drops the sublayer outputs (the authors' Beauty run: 0.0 and 0.3). Init: N(0, 0.02)
for weights and embeddings (the authors' BERT-style code);
``config.emb_init_std`` is unused.
"""

from __future__ import annotations

import dataclasses

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffrec.config import ModelConfig
from diffrec.data.batching import Batch
from diffrec.errors import ConfigError
from diffrec.models.baselines import (
    BaselineRecommender,
    BaselineSettings,
    attention_mask,
    sample_negatives,
    window_positions,
)
from diffrec.params import setting
from diffrec.registry import register


def positive(x: torch.Tensor) -> torch.Tensor:
    """Covariance from an unconstrained vector: elu(x) + 1 > 0."""
    return F.elu(x) + 1.0


def sqrt_cov(cov: torch.Tensor) -> torch.Tensor:
    return cov.clamp(min=1e-12).sqrt()


def wasserstein_pairs(mean_a: torch.Tensor, std_a: torch.Tensor, mean_b: torch.Tensor, std_b: torch.Tensor) -> torch.Tensor:
    """Squared W2 distance of every pair of diagonal Gaussians: (..., La, k), (..., Lb, k) -> (..., La, Lb)."""

    def sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.pow(2).sum(-1, keepdim=True) + b.pow(2).sum(-1).unsqueeze(-2) - 2.0 * a @ b.transpose(-2, -1)

    return sq_dist(mean_a, mean_b) + sq_dist(std_a, std_b)


class WassersteinBlock(nn.Module):
    """Wasserstein self-attention and feed-forward on the mean and covariance streams (post-LN)."""

    def __init__(self, d: int, heads: int, dropout: float, attn_dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.mean_qkv = nn.Linear(d, 3 * d)
        self.cov_qkv = nn.Linear(d, 3 * d)
        self.mean_out = nn.Linear(d, d)
        self.cov_out = nn.Linear(d, d)
        self.mean_ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.cov_ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.norms = nn.ModuleList(nn.LayerNorm(d, eps=1e-12) for _ in range(4))  # mean/cov after attention, mean/cov after FFN
        self.attn_dropout = nn.Dropout(attn_dropout)  # on the attention weights
        self.drop = nn.Dropout(dropout)  # on the sublayer outputs

    def heads_of(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        B, L, _ = x.shape
        return x.view(B, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, L, dh)

    def forward(self, mean: torch.Tensor, cov: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, L, d = mean.shape
        q_m, k_m, v_m = self.heads_of(self.mean_qkv(mean))
        q_c, k_c, v_c = self.heads_of(positive(self.cov_qkv(cov)))
        dist = wasserstein_pairs(q_m, sqrt_cov(q_c), k_m, sqrt_cov(k_c))  # (B, H, L, L)
        logits = (-dist / math.sqrt(d // self.heads)).masked_fill(~allowed, float("-inf"))
        attn = self.attn_dropout(F.softmax(logits, dim=-1))
        mean_ctx = (attn @ v_m).transpose(1, 2).reshape(B, L, d)  # (B, L, d)
        cov_ctx = (attn.pow(2) @ v_c).transpose(1, 2).reshape(B, L, d)
        mean = self.norms[0](mean + self.drop(self.mean_out(mean_ctx)))
        cov = self.norms[1](cov + self.drop(self.cov_out(cov_ctx)))
        mean = self.norms[2](mean + self.drop(self.mean_ffn(mean)))
        cov = self.norms[3](cov + self.drop(self.cov_ffn(cov)))
        return mean, positive(cov)


@dataclasses.dataclass
class STOSASettings(BaselineSettings):
    """STOSA's settings."""

    pvn_weight: float = setting(0.005, "weight of the positive-versus-negative distance regulariser")
    attn_dropout: float = setting(0.1, "dropout on the attention weights")

    def __post_init__(self) -> None:
        if self.pvn_weight < 0:
            raise ConfigError(f"pvn_weight must be >= 0, got {self.pvn_weight}")
        if not 0.0 <= self.attn_dropout < 1.0:
            raise ConfigError(f"attn_dropout must lie in [0, 1), got {self.attn_dropout}")

@register("model", "stosa")
class STOSA(BaselineRecommender):
    """STOSA: Gaussian item embeddings, Wasserstein self-attention; items ranked by -W2 distance."""

    Settings = STOSASettings

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        self.pvn_weight = self.settings.pvn_weight
        attn_dropout = self.settings.attn_dropout
        d = config.hidden_size
        self.mean_emb = nn.Embedding(num_items + 1, d)  # (N + 1, d); row 0 = padding (masked out of attention)
        self.cov_emb = nn.Embedding(num_items + 1, d)
        self.mean_pos = nn.Embedding(config.max_len, d)
        self.cov_pos = nn.Embedding(config.max_len, d)
        self.mean_norm = nn.LayerNorm(d, eps=1e-12)
        self.cov_norm = nn.LayerNorm(d, eps=1e-12)
        self.emb_dropout = nn.Dropout(config.emb_dropout)
        self.blocks = nn.ModuleList(WassersteinBlock(d, config.num_heads, config.dropout, float(attn_dropout)) for _ in range(config.num_blocks))
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    supports_sequence_examples = True

    def sequence_gaussian(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and covariance at every position (causal): (B, L, d), (B, L, d)."""
        pos = window_positions(batch)  # (B, L)
        mean = self.emb_dropout(self.mean_norm(self.mean_emb(batch.seq) + self.mean_pos(pos)))  # (B, L, d)
        cov = positive(self.emb_dropout(self.cov_norm(self.cov_emb(batch.seq) + self.cov_pos(pos))))  # (B, L, d)
        allowed = attention_mask(batch.mask, causal=True)  # (B, 1, L, L)
        for block in self.blocks:
            mean, cov = block(mean, cov, allowed)
        return mean, cov

    def item_gaussians(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every item's mean and covariance square root: (N + 1, d), (N + 1, d)."""
        return self.mean_emb.weight, sqrt_cov(positive(self.cov_emb.weight))

    def query_states(self, batch: Batch) -> torch.Tensor:
        """[m, s, 1, -|m|^2 - |s|^2] at every position: (B, L, 2d + 2)."""
        mean, cov = self.sequence_gaussian(batch)  # (B, L, d) each
        std = sqrt_cov(cov)
        norm = mean.pow(2).sum(-1, keepdim=True) + std.pow(2).sum(-1, keepdim=True)  # (B, L, 1)
        return torch.cat([mean, std, torch.ones_like(norm), -norm], dim=-1)

    def query(self, batch: Batch) -> torch.Tensor:
        """The last position's query: (B, 2d + 2)."""
        return self.query_states(batch)[:, -1]

    def item_table(self) -> torch.Tensor:
        """[2m, 2s, -|m|^2 - |s|^2, 1], so that query . item = -W2^2: (N + 1, 2d + 2)."""
        mean, std = self.item_gaussians()
        norm = mean.pow(2).sum(-1, keepdim=True) + std.pow(2).sum(-1, keepdim=True)  # (N + 1, 1)
        return torch.cat([2.0 * mean, 2.0 * std, -norm, torch.ones_like(norm)], dim=-1)

    def calculate_loss(self, batch: Batch) -> torch.Tensor:
        query, targets = self.training_pairs(batch)  # (n, 2d + 2), (n,)
        if not (self.native and self.pvn_weight > 0):
            return self.target_loss(query, targets).mean()
        negatives = sample_negatives(targets, self.num_items)  # (n,)
        loss = self.target_loss(query, targets, negatives).mean()
        d_seq_pos = -(query * self.item_table()[targets]).sum(-1)  # (n,) W2^2(sequence, target)
        mean, std = self.item_gaussians()
        pos, neg = targets, negatives
        d_pos_neg = (mean[pos] - mean[neg]).pow(2).sum(-1) + (std[pos] - std[neg]).pow(2).sum(-1)  # (n,)
        return loss + self.pvn_weight * F.relu(d_seq_pos - d_pos_neg).mean()
