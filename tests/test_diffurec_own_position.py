"""DiffuRec with ``injection = own_position``: causal approximators' per-position states, no position
seeing its future, sequence pairs that match their prefixes, and training on sequence examples."""

from __future__ import annotations

import pytest
import torch

from diffrec.building import build_model
from diffrec.config import EvalConfig, ModelConfig, RunConfig, TrainConfig
from diffrec.data import make_synthetic
from diffrec.data.batching import Batch
from diffrec.data.synthetic import popularity_hr_at_k
from diffrec.errors import ConfigError
from diffrec.registry import load_builtin_parts, registry
from diffrec.trainer import Trainer

D, N = 16, 40
SEQUENCES = [[3, 7, 1, 9], [2, 5], [5, 9, 30, 4, 6], [8, 8, 8], [11, 12, 13, 14, 15, 16, 17, 18, 19]]


def approximators() -> list[str]:
    load_builtin_parts()
    return registry("approximator").names()


def causal_approximators() -> list[str]:
    """The approximators that are causal as DiffuRec builds them with the causal attention mask."""
    return [name for name in approximators() if causal_approximator(name).causal]


def model(approximator: str = "transformer", **settings) -> torch.nn.Module:
    settings = {"approximator": approximator, "attention_mask": "causal", "injection": "own_position", "emb_init_std": 0.1, **settings}
    config = ModelConfig(model="diffurec", hidden_size=D, num_blocks=2, num_heads=2, max_len=10, settings=settings)
    torch.manual_seed(0)
    return build_model(RunConfig(model=config), N)


def sequence_batch(width: int = 10) -> Batch:
    """Inputs ``h[:-1]`` left-padded to ``width``, with the item after each position (0 at padding)."""
    rows = len(SEQUENCES)
    seq, nxt = torch.zeros(rows, width, dtype=torch.long), torch.zeros(rows, width, dtype=torch.long)
    for row, items in enumerate(SEQUENCES):
        seq[row, width - len(items) + 1 :] = torch.tensor(items[:-1])
        nxt[row, width - len(items) + 1 :] = torch.tensor(items[1:])
    return Batch(seq, nxt[:, -1].clone(), torch.zeros(rows, dtype=torch.long), torch.arange(rows), nxt)


def causal_approximator(name: str):
    """The approximator as DiffuRec builds it with the causal attention mask."""
    config = ModelConfig(model="diffurec", hidden_size=D, num_blocks=2, num_heads=2, max_len=10, settings={"approximator": name, "attention_mask": "causal"})
    torch.manual_seed(0)
    return build_model(RunConfig(model=config), N).approximator.eval()


@pytest.mark.parametrize("name", approximators())
def test_causal_approximators_give_every_positions_state(name):
    """Every approximator either refuses per-position states or gives causal ones whose last column is its output."""
    approximator = causal_approximator(name)
    b = sequence_batch()
    z = torch.randn(*b.seq.shape, D, generator=torch.Generator().manual_seed(1))
    if not approximator.causal:
        with pytest.raises(NotImplementedError, match="not causal"):
            approximator.all_positions(z, b.mask, b.pad_extra)
        return
    with torch.no_grad():
        states = approximator.all_positions(z, b.mask, b.pad_extra)  # (B, L, d)
        assert states.shape == z.shape
        torch.testing.assert_close(states[:, -1], approximator(z, b.mask, b.pad_extra), rtol=1e-5, atol=1e-6)
        for p in range(z.shape[1] - 1):
            changed = z.clone()
            changed[:, p + 1 :] = torch.randn_like(changed[:, p + 1 :]) * 5  # the future, real and padding alike
            again = approximator.all_positions(changed, b.mask, b.pad_extra)
            real = b.mask[:, : p + 1]
            torch.testing.assert_close(again[:, : p + 1][real], states[:, : p + 1][real], rtol=1e-5, atol=1e-6)


def test_the_official_and_key_padding_transformers_are_not_causal():
    for mask in ("official", "key_padding"):
        config = ModelConfig(model="diffurec", hidden_size=D, num_blocks=1, num_heads=2, max_len=10, settings={"attention_mask": mask})
        assert not build_model(RunConfig(model=config), N).approximator.causal


@pytest.mark.parametrize("approximator", causal_approximators())
def test_no_position_sees_its_future(approximator):
    """Position p's x0_hat depends on the history up to p and its own noised target only: rewriting
    the items after p (inputs and targets) changes no earlier prediction."""
    m = model(approximator, delta=0.5).eval()
    b = sequence_batch()
    c, targets = m.training_pairs(b)
    n = targets.shape[0]
    x_t = torch.randn(n, D, generator=torch.Generator().manual_seed(2))
    t = torch.randint(0, 32, (n,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = m.denoiser(x_t, t, c, b, torch.Generator().manual_seed(4))  # (n, d)
    real = b.next_items > 0
    position = torch.arange(b.seq.shape[1]).expand_as(b.seq)[real]  # (n,) each pair's position
    row = torch.arange(len(b)).unsqueeze(1).expand_as(b.seq)[real]
    r, width = 4, b.seq.shape[1]  # the longest row
    for p in range(width - 8, width - 1):
        other = Batch(b.seq.clone(), b.target.clone(), b.pad_extra, b.users, b.next_items.clone())
        other.seq[r, p + 1 :] = torch.randint(20, N + 1, (width - p - 1,))
        other.next_items[r, p:] = torch.randint(20, N + 1, (width - p,))
        with torch.no_grad():
            again = m.denoiser(x_t, t, m.training_pairs(other)[0], other, torch.Generator().manual_seed(4))
        kept = (row != r) | (position <= p)
        torch.testing.assert_close(again[kept], base[kept], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(again[~kept], base[~kept]), "the later positions do see the change"


@pytest.mark.parametrize("approximator", causal_approximators())
def test_no_position_sees_a_later_target(approximator):
    """With x_t noised from the targets as in training, rewriting the sequence after item p + 1
    (position p's target) changes no prediction at positions <= p: no position is given a later
    position's noised target."""
    m = model(approximator, delta=0.5).eval()
    b = sequence_batch()
    real = b.next_items > 0
    n = int(real.sum())
    noise = torch.randn(n, D, generator=torch.Generator().manual_seed(2))
    t = torch.randint(0, 32, (n,), generator=torch.Generator().manual_seed(3))

    def predict(batch: Batch) -> torch.Tensor:
        c, targets = m.training_pairs(batch)
        with torch.no_grad():
            x_t = m.diffusion.add_noise(m.target_x0(targets), noise, t)
            return m.denoiser(x_t, t, c, batch, torch.Generator().manual_seed(4))

    base = predict(b)
    position = torch.arange(b.seq.shape[1]).expand_as(b.seq)[real]
    row = torch.arange(len(b)).unsqueeze(1).expand_as(b.seq)[real]
    r, width = 4, b.seq.shape[1]
    for p in range(width - 8, width - 2):
        other = Batch(b.seq.clone(), b.target.clone(), b.pad_extra, b.users, b.next_items.clone())
        later = torch.randint(20, N + 1, (width - p - 1,))  # the items after item p + 1
        other.next_items[r, p + 1 :] = later
        other.seq[r, p + 2 :] = later[:-1]
        again = predict(other)
        kept = (row != r) | (position <= p)
        torch.testing.assert_close(again[kept], base[kept], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(again[~kept], base[~kept])


@pytest.mark.parametrize("approximator", causal_approximators())
def test_each_positions_prediction_is_that_of_its_prefix(approximator):
    """With lambda = 0 (delta = 0) position j of a sequence example predicts what the history cut
    after j predicts as a prefix example: the pairs are aligned, one per real position."""
    m = model(approximator, delta=0.0).eval()
    b = sequence_batch()
    c, targets = m.training_pairs(b)
    real = b.next_items > 0
    assert torch.equal(targets, b.next_items[real])
    n = targets.shape[0]
    x_t, t = torch.randn(n, D), torch.randint(0, 32, (n,))
    with torch.no_grad():
        per_pair = m.denoiser(x_t, t, c, b, torch.Generator().manual_seed(0))
    grid = torch.zeros(*b.seq.shape, D)
    grid[real] = per_pair
    lookup = torch.zeros(*b.seq.shape, dtype=torch.long)
    lookup[real] = torch.arange(n)
    for j in range(b.seq.shape[1]):
        rows = real[:, j]
        if not rows.any():
            continue
        cut = Batch(b.seq[rows, : j + 1], b.next_items[rows, j], b.pad_extra[rows], b.users[rows])
        idx = lookup[rows, j]
        with torch.no_grad():
            prefix = m.denoiser(x_t[idx], t[idx], m.condition(cut), cut, torch.Generator().manual_seed(0))
        torch.testing.assert_close(prefix, grid[rows, j], rtol=1e-5, atol=1e-5)


def test_the_history_positions_carry_their_own_next_items():
    """At inference every history position with a next item gets that item noised (plus its step
    embedding), padding gets nothing, and the draws follow the evaluation generator."""
    m = model().eval()
    b = sequence_batch()
    prefix = Batch(b.seq, b.target, b.pad_extra, b.users)
    with torch.no_grad():
        own = m._teacher(prefix, torch.Generator().manual_seed(5))  # (B, L - 1, d)
        again = m._teacher(prefix, torch.Generator().manual_seed(5))
        scores = [m.full_sort_predict(prefix, torch.Generator().manual_seed(6)) for _ in range(2)]
    has_next = prefix.seq[:, :-1] > 0
    assert own.shape == (len(b), b.seq.shape[1] - 1, D) and torch.equal(own, again)
    assert (own[~has_next] == 0).all() and (own[has_next].abs().sum(-1) > 0).all()
    assert torch.equal(scores[0], scores[1]) and scores[0].shape == (len(b), N + 1)


def test_own_position_needs_a_causal_approximator():
    for settings in ({"injection": "own_position"}, {"injection": "own_position", "approximator": "bsarec"}):
        config = ModelConfig(model="diffurec", hidden_size=D, num_blocks=1, num_heads=2, max_len=10, settings=settings)
        always = [name for name in approximators() if getattr(registry("approximator").get(name), "causal", False) is True]
        assert {"gru", "mlp", "bsarec_causal"} <= set(always) and "transformer" not in always
        with pytest.raises(ConfigError, match=f"injection=own_position needs a causal approximator: {', '.join(always)}, or transformer with attention_mask=causal"):
            build_model(RunConfig(model=config), N)


def test_the_default_injection_takes_no_sequence_examples():
    config = ModelConfig(model="diffurec", hidden_size=D, num_blocks=1, num_heads=2, max_len=10, settings={"attention_mask": "causal"})
    assert build_model(RunConfig(model=config), N).takes_sequence_examples(config) is False
    assert model().takes_sequence_examples(model().config) is True


@pytest.mark.slow
def test_learns_the_planted_structure_from_sequence_examples(tmp_path):
    """Trained on sequence examples (every position at once), DiffuRec with its own-position
    injection beats popularity by a wide margin within a few epochs."""
    data = make_synthetic(num_users=1500, num_items=300, seed=0)
    settings = {"attention_mask": "causal", "injection": "own_position", "emb_init_std": 0.05, "diffusion_steps": 8}  # 8 steps: a cheaper evaluation
    config = RunConfig(
        model=ModelConfig(model="diffurec", hidden_size=64, num_blocks=2, num_heads=2, max_len=20, settings=settings),
        train=TrainConfig(epochs=4, eval_every=4, batch_size=64, examples="sequence"),
        eval=EvalConfig(batch_size=256),
    )
    trainer = Trainer(config, data, tmp_path / "run", show_progress=False)
    _, _, pairs = trainer.train_epoch(0)
    assert pairs == trainer.examples.num_targets > len(trainer.examples)  # every position, not one per user
    final = Trainer(config, data, tmp_path / "fit", show_progress=False).fit()
    popularity = 100 * popularity_hr_at_k(data, 10)
    assert final["test"]["HR@10"] > popularity + 20, (final["test"], popularity)


@pytest.mark.parametrize("output_dropout", [True, False])
def test_output_dropout_reaches_x0_hat_only_when_on(output_dropout):
    """``output_dropout = false`` scores x0_hat undropped, as SASRec and BSARec score their final
    states; the approximator keeps its own dropout either way."""
    settings = {"approximator": "bsarec_causal", "injection": "own_position", "output_dropout": output_dropout}
    config = ModelConfig(model="diffurec", hidden_size=D, num_blocks=1, num_heads=1, max_len=10, dropout=0.5, settings=settings)
    torch.manual_seed(0)
    net = build_model(RunConfig(model=config), N).train()
    before_norm = []
    net.out_norm.register_forward_pre_hook(lambda module, args: before_norm.append(args[0].detach()))
    net.calculate_loss(sequence_batch()).backward()
    zeros = float((before_norm[0] == 0).float().mean())
    assert (0.3 < zeros < 0.7) if output_dropout else zeros == 0.0
    assert net.approximator.drop.p == 0.5
