"""DreamRec, PreferDiff and a plugin diffusion model built on the diffusion base; evaluation sweeps."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from typer.testing import CliRunner

from diffrec.cli.main import app
from diffrec.config import ModelConfig, RunConfig, TrainConfig
from diffrec.data import make_synthetic
from diffrec.data.batching import Batch
from diffrec.errors import ConfigError
from diffrec.building import build_model
from diffrec.trainer import Trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
N, D = 40, 16


def model(name: str, **settings):
    config = ModelConfig(model=name, hidden_size=D, num_blocks=1, num_heads=2, max_len=8, diffusion_steps=20, **settings)
    torch.manual_seed(0)
    return build_model(RunConfig(model=config), N)


def batch(seed: int = 0, size: int = 6) -> Batch:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N + 1, (size, 8), generator=g)
    seq[: size // 2, :3] = 0
    return Batch(seq, torch.randint(1, N + 1, (size,), generator=g), torch.zeros(size, dtype=torch.long), torch.arange(size))


def test_dreamrec_has_an_unconditional_branch_and_guidance_moves_the_prediction():
    m = model("dreamrec", reverse_sampler={"name": "ddim", "steps": 5}).eval()
    b, other = batch(0), batch(1)
    x_t, t = torch.randn(6, D), torch.full((6,), 7)
    with torch.no_grad():
        cond = m.denoiser(x_t, t, m.condition(b), b)
        uncond = m.denoiser(x_t, t, m.condition(b), b, unconditional=True)
        assert not torch.allclose(cond, uncond)
        assert torch.equal(uncond, m.denoiser(x_t, t, m.condition(other), other, unconditional=True)), "the null condition ignores the history"
        plain = m.full_sort_predict(b, torch.Generator().manual_seed(0))
        m.reverse_sampler = type(m.reverse_sampler)(steps=5, guidance=2.0)
        assert not torch.allclose(plain, m.full_sort_predict(b, torch.Generator().manual_seed(0)))


def test_dreamrec_drops_the_condition_only_in_training():
    m = model("dreamrec", p_uncond=0.5)
    b = batch(size=4000)
    m.train()
    dropped = (m.condition(b) == m.null).all(-1).float().mean().item()
    assert 0.45 < dropped < 0.55
    m.eval()
    assert not (m.condition(b) == m.null).all(-1).any()


def test_guidance_is_refused_for_models_without_an_unconditional_branch():
    with pytest.raises(ConfigError, match="no unconditional branch"):
        model("diffurec", reverse_sampler={"name": "ddim", "guidance": 1.0})


def test_preferdiff_negatives_are_the_centroid_of_the_other_targets():
    m = model("preferdiff")
    b = batch()
    b.target = torch.tensor([1, 2, 2, 3, 4, 5])
    e = m.item_table()[b.target]
    neg = m.negatives(b)
    assert torch.allclose(neg[0], e[1:].mean(0))
    assert torch.allclose(neg[1], e[[0, 3, 4, 5]].mean(0)), "the same item is not its own negative"


def test_preferdiff_with_lamda_one_is_dreamrec():
    pd = model("preferdiff", lamda=1.0, schedule="exp")
    dr = model("dreamrec")
    dr.load_state_dict(pd.state_dict())
    b = batch()
    torch.manual_seed(3)
    a = pd.calculate_loss(b)
    torch.manual_seed(3)
    assert torch.allclose(a, dr.calculate_loss(b), atol=1e-6)
    with pytest.raises(ConfigError, match="its loss must be one of mse, cosine"):
        build_model(RunConfig(model=ModelConfig(model="preferdiff", loss="ce", hidden_size=D, num_heads=2)), N)


def diffusion_models(sequence: bool) -> list[str]:
    from diffrec.models.diffusion import DiffusionRecommender
    from diffrec.registry import load_builtin_parts, registry

    load_builtin_parts()
    classes = {name: registry("model").get(name) for name in registry("model").names()}
    return [name for name, cls in classes.items() if issubclass(cls, DiffusionRecommender) and cls.supports_sequence_examples == sequence]


SEQUENCES = [[3, 7, 1, 9], [2, 5], [5, 9, 30, 4, 6], [8, 8, 8], [11, 12, 13, 14, 15, 16, 17, 18, 19]]


def sequence_batch(width: int = 8) -> Batch:
    """Inputs ``h[:-1]`` left-padded to ``width``, with the item after each position (0 at padding)."""
    seq, nxt = torch.zeros(len(SEQUENCES), width, dtype=torch.long), torch.zeros(len(SEQUENCES), width, dtype=torch.long)
    for row, items in enumerate(SEQUENCES):
        seq[row, width - len(items) + 1 :] = torch.tensor(items[:-1])
        nxt[row, width - len(items) + 1 :] = torch.tensor(items[1:])
    rows = len(SEQUENCES)
    return Batch(seq, nxt[:, -1].clone(), torch.zeros(rows, dtype=torch.long), torch.arange(rows), nxt)


def test_which_diffusion_models_train_on_sequence_examples():
    assert diffusion_models(sequence=True) == ["dreamrec"]  # causal guidance; DiffuRec injects into the whole history
    assert set(diffusion_models(sequence=False)) == {"diffurec", "preferdiff"}


@pytest.mark.parametrize("name", diffusion_models(sequence=True))
def test_each_positions_condition_is_that_of_its_prefix(name):
    """In a sequence batch, position j's condition is the condition of the history cut after j,
    and its target the item after j: the pairs are causal, aligned and one per real position."""
    m = model(name).eval()
    b = sequence_batch()
    c, targets = m.training_pairs(b)
    real = b.next_items > 0
    assert c.shape == (int(real.sum()), D) and torch.equal(targets, b.next_items[real])
    per_position = torch.zeros(*b.seq.shape, D)
    per_position[real] = c
    for j in range(b.seq.shape[1]):
        rows = real[:, j]
        if rows.any():
            cut = Batch(b.seq[:, : j + 1], b.next_items[:, j], b.pad_extra, b.users)
            assert torch.allclose(per_position[rows, j], m.condition(cut)[rows], atol=1e-5), j


@pytest.mark.parametrize("name", diffusion_models(sequence=True))
def test_a_sequence_batch_trains_every_position(name):
    m = model(name, loss="ce", dropout=0.1, emb_dropout=0.1)
    b = sequence_batch()
    loss = m.calculate_loss(b)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0
    prefix = Batch(b.seq, b.target, b.pad_extra, b.users)
    assert m.training_pairs(prefix)[0].shape == (len(SEQUENCES), D)  # prefix examples: one pair per row


def test_dreamrec_learns_from_sequence_examples(tmp_path):
    data = make_synthetic(num_users=1500, num_items=300, seed=0)
    config = RunConfig(
        model=ModelConfig(model="dreamrec", loss="ce", hidden_size=32, num_blocks=1, num_heads=1, max_len=20, diffusion_steps=50, emb_init_std=0.05, reverse_sampler={"name": "ddim", "steps": 4, "guidance": 1.0}),
        train=TrainConfig(examples="sequence", epochs=9, eval_every=3, batch_size=16, lr=5e-3, num_threads=1),  # as many updates as the prefix test
    )
    final = Trainer(config, data, tmp_path / "run", show_progress=False).fit()
    assert final["test"]["HR@10"] > 3 * 100 * 10 / 300, final["test"]  # well above a random ranking


@pytest.mark.parametrize("name, lr", [("dreamrec", 5e-3), ("preferdiff", 2e-3)])
def test_the_published_models_learn_the_planted_structure(name, lr, tmp_path):
    data = make_synthetic(num_users=1500, num_items=300, seed=0)
    config = RunConfig(
        model=ModelConfig(model=name, hidden_size=32, num_blocks=1, num_heads=1, max_len=20, diffusion_steps=50, reverse_sampler={"name": "ddim", "steps": 10, "guidance": 1.0}),
        train=TrainConfig(epochs=6, eval_every=3, batch_size=256, lr=lr, num_threads=1),
    )
    final = Trainer(config, data, tmp_path / "run", show_progress=False).fit()
    assert final["test"]["HR@10"] > 3 * 100 * 10 / 300, final["test"]  # well above a random ranking


def test_a_diffusion_model_written_by_import_trains_and_evaluates_from_the_cli(tmp_path):
    plugin = REPO / "examples" / "custom_diffusion_model.py"
    assert len(plugin.read_text().splitlines()) < 60
    out = tmp_path / "gru_eps"
    runner = CliRunner()
    args = ["--epochs", "6", "--eval-every", "3", "--hidden-size", "32", "--num-blocks", "1", "--max-len", "20", "--batch-size", "256", "-q"]
    result = runner.invoke(app, ["train", "--plugin", str(plugin), "--model", "gru_eps", "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    final = json.loads((out / "metrics.json").read_text())
    assert final["test"]["HR@10"] > 2 * 100 * 10 / 500, final["test"]  # it learns: twice a random ranking
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(out), "--set", "reverse_sampler.steps=4", "--json"])
    assert result.exit_code == 0, result.output
    assert 0 <= json.loads(result.stdout)["metrics"]["HR@10"] <= 100


def test_an_evaluation_sweep_is_saved_and_plotted(tmp_path):
    run = tmp_path / "run"
    runner = CliRunner()
    tiny = ["--epochs", "1", "--hidden-size", "16", "--num-blocks", "1", "--num-heads", "2", "--max-len", "12", "--emb-init-std", "0.05", "-q"]
    assert runner.invoke(app, ["train", "--out", str(run), *tiny]).exit_code == 0
    sweep = tmp_path / "steps.json"
    args = ["evaluate", "--checkpoint", str(run), "--set", "reverse_sampler=ddim", "--sweep", "reverse_sampler.steps=1,2,4", "--save-sweep", str(sweep)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    points = json.loads(sweep.read_text())["points"]
    assert [p["value"] for p in points] == [1, 2, 4] and all(p["seconds"] > 0 and "HR@10" in p["metrics"] for p in points)
    assert runner.invoke(app, args).exit_code == 2, "an existing sweep needs --force"
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    assert runner.invoke(app, ["plot", "--sweep", str(sweep)]).exit_code == 0
    assert (tmp_path / "steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = runner.invoke(app, ["evaluate", "--checkpoint", str(run), "--sweep", "reverse_sampler.steps"])
    assert bad.exit_code == 2 and "--sweep takes KEY=V1,V2" in bad.stderr


def test_a_flat_sweep_is_drawn_on_a_readable_scale(tmp_path, monkeypatch):
    import matplotlib.figure

    from diffrec.plots import plot_sweeps

    limits = []
    real = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: limits.extend(ax.get_ylim() for ax in fig.axes) or real(fig, *a, **k))
    points = [{"value": s, "seconds": 10.0 * s, "metrics": {"HR@10": 8.192 + 0.001 * (s % 3), "NDCG@10": 4.49}} for s in (1, 2, 4, 8)]
    plot_sweeps([{"key": "reverse_sampler.steps", "checkpoint": "run", "model": "diffurec", "split": "test", "users": 10, "points": points}], tmp_path / "s.png")
    (hr_low, hr_high), (nd_low, nd_high), _ = limits
    assert hr_high - hr_low >= 0.8 and hr_low <= 8.192 and hr_high >= 8.194  # 10 % of the value, not the third decimal
    assert nd_high - nd_low >= 0.5 and nd_low <= 4.49 <= nd_high
