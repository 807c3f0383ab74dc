"""Integration on a slice of the shipped Amazon Beauty data (skips without ../shared)."""

import json

import numpy as np
import torch
from conftest import shared_dataset

from diffrec.config import EvalConfig, ModelConfig, RunConfig, TrainConfig
from diffrec.data import EvalInputs, SequenceData, TrainExamples, load_dataset
from diffrec.trainer import Trainer


def test_beauty_protocol_counts():
    data = load_dataset(shared_dataset("beauty"))
    assert (data.num_users, data.num_items, data.num_actions) == (22363, 12101, 198502)
    # every prefix of every training part (reference notes: 131,413 examples)
    assert len(TrainExamples(data, 50)) == 131413
    test = EvalInputs(data, "test", 50)
    assert np.array_equal(test.targets, data.test_targets())
    assert np.array_equal(EvalInputs(data, "valid", 50).targets, data.valid_targets())


def test_beauty_slice_trains_and_evaluates(tmp_path):
    full = load_dataset(shared_dataset("beauty"))
    data = SequenceData(full.sequences[:1500], num_items=full.num_items, name="beauty-slice")
    config = RunConfig(
        model=ModelConfig(hidden_size=32, num_blocks=1, num_heads=2, emb_init_std=0.05),
        train=TrainConfig(epochs=1, eval_every=1, batch_size=512),
        eval=EvalConfig(batch_size=512),
    )
    final = Trainer(config, data, tmp_path / "run", show_progress=False).fit()
    for split in ("valid", "test"):
        values = final[split]
        assert all(np.isfinite(v) and 0 <= v <= 100 for v in values.values())
        assert values["HR@5"] <= values["HR@10"] <= values["HR@20"]
        assert values["NDCG@10"] <= values["HR@10"]
    record = json.loads((tmp_path / "run" / "dataset.json").read_text())
    assert record["num_items"] == 12101 and record["num_users"] == 1500
    assert torch.isfinite(torch.tensor(final["examples_per_second"]))
