"""Compose DiffuRec from registry parts in Python, train it on the built-in data and rank items."""

from __future__ import annotations

import tempfile

import torch

from diffrec import ModelConfig, RunConfig, TrainConfig
from diffrec.data import history_batch, make_synthetic
from diffrec.trainer import Trainer


def main() -> None:
    data = make_synthetic(num_users=1000, num_items=200, seed=0)
    config = RunConfig(
        model=ModelConfig(approximator="gru", schedule="cosine", hidden_size=64, num_blocks=2, max_len=20, emb_init_std=0.05),
        train=TrainConfig(epochs=4, eval_every=2, batch_size=256),
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, data, out, show_progress=False)
        final = trainer.fit()
        print({k: round(v, 2) for k, v in final["test"].items() if k.endswith("@10")})
        model = trainer.model.eval()
        scores = model.full_sort_predict(history_batch(data.sequences[0][:-1], config.model.max_len), torch.Generator().manual_seed(0))
        scores[0, 0] = float("-inf")
        print("top 5 for user 0:", torch.topk(scores[0], 5).indices.tolist())


if __name__ == "__main__":
    main()
