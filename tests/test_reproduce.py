import json

import pytest

from diffrec.data import make_synthetic
from diffrec.errors import DiffrecError
from diffrec.reproduce import PRESETS, markdown_table, paired_t_test, preset_config, reproduce


def write_sequences(path, data):
    path.mkdir(parents=True)
    lines = [" ".join(map(str, [u + 1, *seq])) for u, seq in enumerate(data.sequences)]
    (path / "sequences.txt").write_text("\n".join(lines) + "\n")


def tiny(config):
    config.model.hidden_size = 16
    config.model.num_blocks = 1
    config.model.num_heads = 2
    config.model.max_len = 10
    config.model.emb_init_std = 0.05
    config.train.epochs = 1
    config.train.batch_size = 256
    config.eval.batch_size = 256


def test_reproduce_writes_summary_and_reuses_runs(tmp_path):
    root = tmp_path / "datasets"
    write_sequences(root / "beauty", make_synthetic(num_users=300, num_items=60, seed=4))
    logs = []
    kwargs = dict(models=["diffurec", "diffurec-lambda0"], seeds=[1, 2], data_root=root, out_dir=tmp_path / "out", overrides=tiny, show_progress=False, log=logs.append)
    summary = reproduce("beauty", **kwargs)
    saved = json.loads((tmp_path / "out" / "beauty.json").read_text())
    assert saved["models"].keys() == {"diffurec", "diffurec-lambda0"}
    entry = saved["models"]["diffurec-lambda0"]
    assert [r["seed"] for r in entry["runs"]] == [1, 2]
    assert set(entry["test"]["HR@10"]) == {"mean", "std"}
    assert "t_test_vs_diffurec" in entry and "HR@10" in entry["t_test_vs_diffurec"]
    assert saved["git_sha"] and saved["machine"] and saved["wall_seconds"] > 0
    assert "diffrec train --config" in entry["runs"][0]["command"]
    assert saved["paper"]["diffurec"]["HR@10"] == pytest.approx(7.9068)
    table = markdown_table(summary)
    assert "| diffurec-lambda0 | 2 |" in table and "paper: diffurec" in table
    logs.clear()
    reproduce("beauty", **kwargs)
    assert all("reusing" in line for line in logs) and len(logs) == 4

    def longer(config):
        tiny(config)
        config.train.epochs = 2

    logs.clear()
    extended = reproduce("beauty", **{**kwargs, "models": ["diffurec"], "seeds": [1], "overrides": longer})
    assert logs == [f"diffurec seed 1: resuming in {tmp_path / 'out' / 'runs' / 'beauty' / 'diffurec' / 'seed1'}"]
    assert extended["models"]["diffurec"]["runs"][0]["epochs_run"] == 2


def test_presets_and_errors():
    config = preset_config("diffurec-keypad", "ml-1m", "fast", 7, "x")
    assert config.model.attention_mask == "key_padding" and config.model.max_len == 200
    assert config.model.emb_init_std == 0.05 and config.train.seed == 7
    assert preset_config("diffurec-lambda0", "beauty", "paper", 1, "x").model.delta == 0.0
    assert preset_config("diffurec-1step", "beauty", "paper", 1, "x").model.reverse_sampler == "one_step"
    with pytest.raises(DiffrecError, match="unknown model preset"):
        preset_config("nope", "beauty", "paper", 1, "x")
    assert "sasrec-ce" in PRESETS


def test_paired_t_test():
    assert paired_t_test([1.0], [2.0]) is None
    assert paired_t_test([1.0, 2.0, 3.0], [1.5, 2.5, 3.5]) is None  # constant difference: undefined
    p = paired_t_test([5.0, 6.0, 7.0, 6.5], [4.0, 5.5, 5.0, 6.0])
    assert 0 < p < 0.2
