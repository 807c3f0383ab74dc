"""BSARec (Shin et al., "An Attentive Inductive Bias for Sequential Recommendation beyond the Self-Attention", AAAI 2024).

Self-attention acts as a low-pass filter over a sequence, so stacked attention
layers smooth the item representations towards each other. BSARec mixes into
every layer an inductive bias that keeps the high frequencies: a Fourier
rescaler with a learned per-dimension gain.

Embedding layer: ``E = Dropout(LayerNorm(M[seq] + P))`` with item embeddings M
(row 0 = padding: zero at init, then learned through the output layer only)
and learned absolute positions P over the left-padded ``max_len`` window,
padding positions included.

Frequency rescaler (the inductive bias ``A_IB``) of a layer input X (L x d):

    LFC[X] = IDFT(keep the lowest c // 2 + 1 bins of DFT(X)),   HFC[X] = X - LFC[X],
    A_IB(X) = LayerNorm(X + Dropout(LFC[X] + beta^2 * HFC[X])),

with real DFTs along the sequence (orthonormal) and ``beta`` a learned
d-vector (standard-normal init; the authors learn its square root).

BSARec layer: ``S = alpha * A_IB(X) + (1 - alpha) * A_SA(X)``, where ``A_SA`` is
multi-head self-attention (scores / sqrt(d_head), an additive -10000 on keys
that are padding or in the future, dropout on the attention weights, an output
projection, dropout, residual and post-LN), then the point-wise feed-forward
``LayerNorm(S + Dropout(W2 GELU(W1 S)))`` of width 4d.

Prediction: the last position's output F is the query and the item
embeddings are the output layer, r_i = F . M_i; the paper trains the softmax
cross-entropy over the catalogue (``--loss ce``) on every prefix (the default
prefix examples). ``options["c"]`` and ``options["alpha"]`` are the paper's c and
alpha (defaults: the authors' Beauty run, c = 5 and alpha = 0.7);
``options["attn_dropout"]`` drops attention weights (default 0.5, the authors'),
``config.dropout`` the sublayer outputs, ``config.emb_dropout`` the embeddings.
With alpha = 0 the model is the post-LN SASRec of the authors' (FMLP-Rec) codebase.

The frequency rescaler sees the whole window: the output at a position depends
on items after it, padding included, so BSARec is not causal when alpha > 0
(as in the authors' model). Only the last position is used and the window
holds only the history, so no target leaks; but the model trains on prefix
examples only, and its function depends on the padding, so batches are never
trimmed (``trims_padding_exactly`` is false) and a narrower batch is left-padded
back to the full window before encoding. As in the authors' code, a padding
query, whose keys are all masked, attends to every position (the -10000 shifts
all its scores alike); with alpha > 0 such outputs reach real positions through
the rescaler of the next layer.

Init (the authors' BERT-style code): N(0, 0.02) for every weight matrix and
embedding, zero biases, LayerNorm (1, 0); ``config.emb_init_std`` is unused.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from diffrec.config import ModelConfig
from diffrec.data.batching import Batch
from diffrec.errors import ConfigError
from diffrec.models.baselines import BaselineRecommender, BaselineSettings, SelfAttention
from diffrec.params import setting
from diffrec.registry import register

#: the additive attention mask of the authors' code (not -inf: a query without keys stays finite)
MASKED = -10000.0


def attention_bias(mask: torch.Tensor) -> torch.Tensor:
    """Additive (B, 1, L, L) mask: 0 where query i may attend to key j (a real key, j <= i), else -10000."""
    L = mask.shape[1]
    allowed = mask[:, None, None, :] & torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
    return torch.zeros(allowed.shape, device=mask.device).masked_fill(~allowed, MASKED)


class FrequencyRescaler(nn.Module):
    """The inductive bias A_IB: low frequencies kept, high frequencies scaled by beta^2, then residual and post-LN."""

    def __init__(self, d: int, c: int, dropout: float) -> None:
        super().__init__()
        self.bins = c // 2 + 1  # DFT bins the low-pass filter keeps
        self.sqrt_beta = nn.Parameter(torch.randn(d))  # beta = sqrt_beta^2 >= 0, one gain per dimension
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d, eps=1e-12)

    def low_pass(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """LFC[x]: the lowest ``bins`` frequencies along the sequence (padding included; ``mask`` is
        unused), back in time: (B, L, d)."""
        L = x.shape[1]
        spectrum = torch.fft.rfft(x.float(), dim=1, norm="ortho")  # (B, L // 2 + 1, d) complex
        keep = torch.arange(spectrum.shape[1], device=x.device) < self.bins  # (L // 2 + 1,)
        return torch.fft.irfft(spectrum * keep[None, :, None], n=L, dim=1, norm="ortho").to(x.dtype)  # (B, L, d)

    def rescale(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """LFC[x] + beta^2 * HFC[x]: (B, L, d)."""
        low = self.low_pass(x, mask)
        return low + self.sqrt_beta.pow(2) * (x - low)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.norm(x + self.drop(self.rescale(x, mask)))  # (B, L, d)


class BSARecBlock(nn.Module):
    """alpha * A_IB(x) + (1 - alpha) * A_SA(x), then the feed-forward sublayer (post-LN throughout)."""

    def __init__(self, d: int, heads: int, c: int, alpha: float, dropout: float, attn_dropout: float, rescaler: nn.Module | None = None) -> None:
        super().__init__()
        self.alpha = alpha
        self.rescaler = rescaler if rescaler is not None else FrequencyRescaler(d, c, dropout)  # another low-pass filter may stand in
        self.attn = SelfAttention(d, heads, attn_dropout)  # attn_dropout drops the attention weights
        self.attn_norm = nn.LayerNorm(d, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.ffn_norm = nn.LayerNorm(d, eps=1e-12)
        self.drop = nn.Dropout(dropout)

    def self_attention(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """A_SA(x) = LayerNorm(x + Dropout(MHA(x))): (B, L, d)."""
        return self.attn_norm(x + self.drop(self.attn(x, bias)))

    def forward(self, x: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (B, L), True at real items, is passed to the rescaler (the DFT ignores it)."""
        if self.alpha == 0.0:  # a branch with weight zero is not computed
            mixed = self.self_attention(x, bias)
        elif self.alpha == 1.0:
            mixed = self.rescaler(x, mask)
        else:
            mixed = self.alpha * self.rescaler(x, mask) + (1.0 - self.alpha) * self.self_attention(x, bias)  # (B, L, d)
        return self.ffn_norm(mixed + self.drop(self.ffn(mixed)))


@dataclasses.dataclass
class BSARecSettings(BaselineSettings):
    """BSARec's settings (defaults: the authors' Beauty run)."""

    c: int = setting(5, "the low-pass filter keeps the lowest c // 2 + 1 frequency bins")
    alpha: float = setting(0.7, "weight of the frequency rescaler against self-attention")
    attn_dropout: float = setting(0.5, "dropout on the attention weights")

    def __post_init__(self) -> None:
        if self.c < 1:
            raise ConfigError(f"c must be an integer >= 1, got {self.c!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be a number in [0, 1], got {self.alpha!r}")
        if not 0.0 <= self.attn_dropout < 1.0:
            raise ConfigError(f"attn_dropout must be a number in [0, 1), got {self.attn_dropout!r}")

@register("model", "bsarec")
class BSARec(BaselineRecommender):
    """BSARec: self-attention mixed with a high-frequency-keeping Fourier rescaler; shared item embeddings score the next item."""

    Settings = BSARecSettings

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        c, alpha, attn_dropout = self.settings.c, self.settings.alpha, self.settings.attn_dropout
        d = config.hidden_size
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)  # (N + 1, d); row 0 = padding
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.emb_norm = nn.LayerNorm(d, eps=1e-12)
        self.emb_dropout = nn.Dropout(config.emb_dropout)
        self.blocks = nn.ModuleList(
            BSARecBlock(d, config.num_heads, c, float(alpha), config.dropout, float(attn_dropout)) for _ in range(config.num_blocks)
        )
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    @property
    def trims_padding_exactly(self) -> bool:
        # the rescaler's DFT runs over the whole max_len window, padding included
        return False

    def full_window(self, seq: torch.Tensor) -> torch.Tensor:
        """The batch left-padded back to the max_len window: (B, L) -> (B, max_len)."""
        return F.pad(seq, (self.config.max_len - seq.shape[1], 0))

    def encode(self, batch: Batch) -> torch.Tensor:
        """Outputs at every position of the full window (each sees the whole window if alpha > 0): (B, max_len, d)."""
        seq = self.full_window(batch.seq)  # (B, L)
        positions = torch.arange(seq.shape[1], device=seq.device)
        x = self.emb_dropout(self.emb_norm(self.item_emb(seq) + self.pos_emb(positions)[None]))  # (B, L, d)
        bias = attention_bias(seq > 0)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, bias)
        return x

    def query(self, batch: Batch) -> torch.Tensor:
        """F at the last position: (B, d)."""
        return self.encode(batch)[:, -1]

    def item_table(self) -> torch.Tensor:
        return self.item_emb.weight  # (N + 1, d)
