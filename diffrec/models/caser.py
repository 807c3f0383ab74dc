"""Caser (Tang & Wang, "Personalized Top-N Sequential Recommendation via Convolutional Sequence Embedding", WSDM 2018).

The last ``L = options["window"]`` items (default 5) form an L x d "image" E
(shorter histories are left-padded with zero vectors). Horizontal
convolutions, ``options["n_h"]`` filters (default 16) of every height 1..L and
width d, are max-pooled over time (union-level patterns); ``options["n_v"]``
vertical L x 1 filters (default 4) take weighted sums of the rows (point-level
patterns). Both, concatenated and after dropout, pass through a ReLU fully
connected layer to z; item i scores ``z . W'_i + b'_i`` with separate output
embeddings W' and bias b'.

Deviations: our batches carry no user embedding table (models are built from
the item count only), so this is Caser's item-only variant: the user term P_u
of the output layer is left out. Native objective: ``--loss bce`` with one
uniformly sampled negative per target (the paper predicts T = 3 next items
with 3 negatives each; our examples have one target). Init as the authors'
code: embeddings N(0, 1/d), output bias 0; ``config.emb_init_std`` is unused.
The paper's one dropout (on the concatenated features) uses
``config.dropout``; ``config.emb_dropout`` is unused. Only the last L columns
are read and padding embeds to zero, so trimmed batches give the same
function.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from diffrec.config import ModelConfig
from diffrec.data.batching import Batch
from diffrec.errors import ConfigError
from diffrec.models.baselines import BaselineRecommender, BaselineSettings, append_ones
from diffrec.params import setting
from diffrec.registry import register


@dataclasses.dataclass
class CaserSettings(BaselineSettings):
    """Caser's settings."""

    window: int = setting(5, "the last L items that form the image")
    n_h: int = setting(16, "horizontal filters of every height 1..L")
    n_v: int = setting(4, "vertical filters")

    def __post_init__(self) -> None:
        for name in ("window", "n_h", "n_v"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

@register("model", "caser")
class Caser(BaselineRecommender):
    """Caser: horizontal and vertical convolutions over the last L items (item-only variant)."""

    Settings = CaserSettings

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        self.window, n_h, n_v = self.settings.window, self.settings.n_h, self.settings.n_v
        d = config.hidden_size
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)  # (N + 1, d); padding embeds to 0
        self.conv_v = nn.Conv2d(1, n_v, (self.window, 1))
        self.conv_h = nn.ModuleList(nn.Conv2d(1, n_h, (h, d)) for h in range(1, self.window + 1))
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(n_v * d + n_h * self.window, d)
        self.out_emb = nn.Embedding(num_items + 1, d)  # W'
        self.out_bias = nn.Parameter(torch.zeros(num_items + 1))  # b'
        for emb in (self.item_emb, self.out_emb):
            nn.init.normal_(emb.weight, std=1.0 / d)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def query(self, batch: Batch) -> torch.Tensor:
        """[z, 1]: (B, d + 1)."""
        seq = batch.seq[:, -self.window :]
        seq = F.pad(seq, (self.window - seq.shape[1], 0))  # (B, L): left-pad narrow batches with padding ids
        image = self.item_emb(seq).unsqueeze(1)  # (B, 1, L, d)
        vertical = self.conv_v(image).flatten(1)  # (B, n_v * d)
        horizontal = [F.relu(conv(image)).squeeze(3).amax(dim=2) for conv in self.conv_h]  # window x (B, n_h)
        z = F.relu(self.fc(self.dropout(torch.cat([vertical, *horizontal], dim=1))))  # (B, d)
        return append_ones(z)

    def item_table(self) -> torch.Tensor:
        return torch.cat([self.out_emb.weight, self.out_bias[:, None]], dim=1)  # (N + 1, d + 1)
