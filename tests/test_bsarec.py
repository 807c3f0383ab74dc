"""BSARec: the frequency rescaler, the mixing weight alpha, padding, options, presets and learning."""

from __future__ import annotations

import json
import math

import pytest
import torch

import diffrec.models.bsarec  # noqa: F401  (registers "bsarec")
from diffrec.config import EvalConfig, ModelConfig, RunConfig, TrainConfig, step_lr
from diffrec.data import history_batch, make_synthetic
from diffrec.data.batching import Batch
from diffrec.data.synthetic import popularity_hr_at_k
from diffrec.errors import ConfigError, DiffrecError
from diffrec.models.bsarec import MASKED, FrequencyRescaler, attention_bias
from diffrec.registry import list_parts
from diffrec.reproduce import PRESETS, RECIPES, preset_config
from diffrec.building import build_model, sequence_example_models
from diffrec.trainer import Trainer

D, N, MAX_LEN = 16, 30, 8
HISTORIES = [[3, 7, 1], [2], [5, 9, 30, 4], [8, 8], [11, 12, 13, 14, 15, 16, 17, 18]]


def make_model(**changes) -> torch.nn.Module:
    base = {"model": "bsarec", "hidden_size": D, "num_blocks": 2, "num_heads": 2, "max_len": MAX_LEN, "dropout": 0.0, "emb_dropout": 0.0}
    options = {"attn_dropout": 0.0, **changes.pop("options", {})}
    base.update(changes)
    torch.manual_seed(0)
    return build_model(RunConfig(model=ModelConfig(**base, options=options)), N)


def padded_batch(histories: list[list[int]], width: int = MAX_LEN) -> Batch:
    seq = torch.zeros(len(histories), width, dtype=torch.long)
    for row, items in enumerate(histories):
        seq[row, width - len(items) :] = torch.tensor(items)
    target = torch.tensor([1 + i % N for i in range(len(histories))])
    return Batch(seq, target, torch.full((len(histories),), MAX_LEN - width), torch.arange(len(histories)))


# --------------------------------------------------------------------------- model contract


def test_registered_and_prefix_only():
    assert "bsarec" in list_parts()["model"]
    assert "bsarec" not in sequence_example_models()  # the rescaler sees the whole window


def test_shapes_gradients_and_finite_loss():
    model = make_model(dropout=0.1, emb_dropout=0.1, options={"attn_dropout": 0.1})
    batch = padded_batch(HISTORIES)
    assert model.query(batch).shape == (len(HISTORIES), D)
    loss = model.calculate_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name  # every parameter takes part, the padding row through the output layer
    model.eval()
    scores = model.full_sort_predict(batch)
    assert scores.shape == (len(HISTORIES), N + 1) and torch.isfinite(scores).all()
    assert torch.allclose(scores, model.query(batch) @ model.item_emb.weight.t())
    items = torch.tensor([[1, 2, 3]] * len(HISTORIES))
    assert torch.allclose(model.predict(batch, items), scores.gather(1, items))
    _, top = model.recommend(batch, 5, batch.seq)
    for row, hist in enumerate(HISTORIES):
        assert not {0, *hist} & set(top[row].tolist())


def test_ce_loss_is_the_full_catalogue_softmax():
    model = make_model().eval()
    batch = padded_batch(HISTORIES)
    want = torch.nn.functional.cross_entropy(model.full_sort_predict(batch), batch.target)  # padding column included
    assert torch.allclose(model.calculate_loss(batch), want, atol=1e-6)


def test_initialisation():
    model = make_model(hidden_size=64, num_heads=1)
    weights = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))])
    assert abs(weights.std().item() - 0.02) < 0.002
    assert all((m.bias == 0).all() for m in model.modules() if isinstance(m, torch.nn.Linear))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all((m.weight == 1).all() and (m.bias == 0).all() and m.eps == 1e-12 for m in norms)
    assert (model.item_emb.weight[0] == 0).all()
    betas = torch.cat([b.rescaler.sqrt_beta for b in model.blocks])  # standard normal, untouched by the 0.02 init
    assert 0.7 < betas.std().item() < 1.3


# --------------------------------------------------------------------------- the frequency rescaler


@pytest.mark.parametrize("length", [8, 7])
def test_low_pass_covering_every_bin_is_the_identity(length):
    x = torch.randn(3, length, D)
    rescaler = FrequencyRescaler(D, c=length, dropout=0.0)  # c // 2 + 1 >= length // 2 + 1 bins
    assert torch.allclose(rescaler.low_pass(x), x, atol=1e-5)
    with torch.no_grad():
        rescaler.sqrt_beta.normal_()
    assert torch.allclose(rescaler.rescale(x), x, atol=1e-5)  # no high frequencies left to rescale


def test_unit_beta_gives_back_the_input():
    x = torch.randn(3, 8, D)
    rescaler = FrequencyRescaler(D, c=3, dropout=0.0)
    with torch.no_grad():
        rescaler.sqrt_beta.copy_(torch.where(torch.arange(D) % 2 == 0, 1.0, -1.0))  # beta = sqrt_beta^2 = 1
    low = rescaler.low_pass(x)
    assert not torch.allclose(low, x, atol=1e-3)  # the filter does cut something here
    assert torch.allclose(rescaler.rescale(x), x, atol=1e-5)


def test_low_pass_keeps_constant_sequences_and_averages_with_one_bin():
    rescaler = FrequencyRescaler(D, c=1, dropout=0.0)  # keeps the zero frequency only
    constant = torch.randn(2, 1, D).expand(2, 8, D)
    assert torch.allclose(rescaler.low_pass(constant), constant, atol=1e-5)
    x = torch.randn(2, 8, D)
    assert torch.allclose(rescaler.low_pass(x), x.mean(dim=1, keepdim=True).expand_as(x), atol=1e-5)


def test_low_pass_keeps_exactly_the_lowest_c_over_2_plus_1_frequencies():
    L, c = 10, 5  # bins 0, 1, 2 kept
    t = torch.arange(L, dtype=torch.float32)
    rescaler = FrequencyRescaler(1, c=c, dropout=0.0)
    for k in range(L // 2 + 1):
        wave = torch.cos(2 * math.pi * k * t / L)[None, :, None]  # (1, L, 1)
        want = wave if k <= c // 2 else torch.zeros_like(wave)
        assert torch.allclose(rescaler.low_pass(wave), want, atol=1e-5), k


def test_rescaler_output_is_the_post_ln_residual():
    rescaler = FrequencyRescaler(D, c=3, dropout=0.0)
    x = torch.randn(2, 8, D)
    assert torch.allclose(rescaler(x), torch.nn.functional.layer_norm(x + rescaler.rescale(x), (D,), eps=1e-12), atol=1e-5)


# --------------------------------------------------------------------------- alpha, attention and causality


BRANCHES = {"rescaler": lambda block: block.rescaler.parameters(), "attention": lambda block: block.attn.parameters()}


def matters(model, branch: str) -> bool:
    """Whether perturbing the branch's parameters in every block changes the scores."""
    batch = padded_batch(HISTORIES)
    before = model.full_sort_predict(batch)
    with torch.no_grad():
        for block in model.blocks:
            for p in BRANCHES[branch](block):
                p.add_(torch.randn_like(p))
    return not torch.allclose(before, model.full_sort_predict(batch), atol=1e-6)


@pytest.mark.parametrize("alpha,irrelevant", [(0.0, "rescaler"), (1.0, "attention"), (0.5, None)])
def test_alpha_selects_the_branches(alpha, irrelevant):
    """alpha = 0: the rescaler (its beta) is irrelevant; alpha = 1: attention is; in between both matter."""
    for branch in BRANCHES:
        assert matters(make_model(options={"alpha": alpha}).eval(), branch) == (branch != irrelevant), branch


def test_alpha_zero_is_causal_and_the_rescaler_is_not():
    """With alpha = 0 a real position's output depends only on the items up to it; with alpha > 0 the
    rescaler mixes the whole window, later items included (only the last position is ever scored)."""
    history = [3, 7, 1, 9, 12, 5]
    batch = padded_batch([history])
    first_real = MAX_LEN - len(history)
    for alpha, causal in ((0.0, True), (0.7, False)):
        model = make_model(options={"alpha": alpha}).eval()
        states = model.encode(batch)  # (1, L, d)
        for p in range(first_real, MAX_LEN - 1):
            changed = batch.seq.clone()
            changed[0, p + 1 :] = torch.tensor([20 + j for j in range(MAX_LEN - p - 1)])
            moved = model.encode(Batch(changed, batch.target, batch.pad_extra, batch.users))
            same = torch.allclose(states[0, first_real : p + 1], moved[0, first_real : p + 1], atol=1e-5)
            assert same == causal, (alpha, p)


def test_attention_masks_padding_and_future_keys_additively():
    model = make_model(num_heads=1, options={"alpha": 0.0}).eval()
    block = model.blocks[0]
    seq = torch.tensor([[0, 0, 4, 5, 6]])
    bias = attention_bias(seq > 0)  # (1, 1, 5, 5)
    allowed = torch.tensor([[j >= 2 and j <= i for j in range(5)] for i in range(5)])
    assert torch.equal(bias[0, 0] == 0, allowed) and set(bias.unique().tolist()) == {0.0, MASKED}
    x = torch.randn(1, 5, D)
    q, k, v = block.attn.qkv(x).chunk(3, dim=-1)  # (1, 5, d) each
    weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(D) + bias[:, 0], dim=-1)  # (1, 5, 5)
    want = torch.nn.functional.layer_norm(x + block.attn.out(weights @ v), (D,), eps=1e-12)
    assert torch.allclose(block.self_attention(x, bias), want, atol=1e-5)
    assert (weights[0, 2:][~allowed[2:]] < 1e-6).all()  # real queries: real keys up to themselves
    assert (weights[0, :2] > 0.01).all()  # padding queries see every key, as in the authors' code


# --------------------------------------------------------------------------- padding


def test_batches_are_never_trimmed(tmp_path):
    """The DFT runs over the full max_len window, so the model refuses trimming: training and
    evaluation hand it full windows, and a narrower batch is padded back before encoding."""
    model = make_model().eval()
    assert not model.trims_padding_exactly
    x = torch.randn(1, MAX_LEN, D)
    x[:, :3] = 0.0  # three padding positions
    rescaler = model.blocks[0].rescaler
    assert not torch.allclose(rescaler.rescale(x)[:, -1], rescaler.rescale(x[:, 3:])[:, -1], atol=1e-4)  # a trimmed DFT is another function
    full = model.full_sort_predict(padded_batch(HISTORIES[:4]))
    assert torch.allclose(full, model.full_sort_predict(padded_batch(HISTORIES[:4], 5)), atol=1e-5)
    one = history_batch([3, 7, 1], MAX_LEN)  # what `diffrec recommend` builds: width 4
    assert one.seq.shape[1] < MAX_LEN and torch.allclose(model.full_sort_predict(one), full[:1], atol=1e-5)

    data = make_synthetic(num_users=60, num_items=N, seed=3)
    config = RunConfig(
        model=ModelConfig(model="bsarec", hidden_size=D, num_blocks=1, num_heads=2, max_len=MAX_LEN),
        train=TrainConfig(epochs=1, batch_size=16, seed=0),
        eval=EvalConfig(batch_size=16),
    )
    trainer = Trainer(config, data, tmp_path / "run", show_progress=False)
    widths = set()
    loss, predict = trainer.model.calculate_loss, trainer.model.full_sort_predict
    trainer.model.calculate_loss = lambda b: widths.add(("train", b.seq.shape[1])) or loss(b)
    trainer.model.full_sort_predict = lambda b, g=None: widths.add(("eval", b.seq.shape[1])) or predict(b, g)
    trainer.fit()
    assert widths == {("train", MAX_LEN), ("eval", MAX_LEN)}


def test_sequence_examples_are_refused(tmp_path):
    config = RunConfig(model=ModelConfig(model="bsarec", hidden_size=D, num_blocks=1, num_heads=2, max_len=MAX_LEN), train=TrainConfig(examples="sequence"))
    with pytest.raises(ConfigError, match="'bsarec' trains on prefix examples only"):
        Trainer(config, make_synthetic(num_users=50, num_items=20, seed=0), tmp_path / "run", show_progress=False)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "options,message",
    [
        ({"c": 0}, "c must be an integer >= 1, got 0"),
        ({"c": 2.5}, "c must be int, got float 2.5"),
        ({"c": True}, "c must be int, got bool True"),
        ({"alpha": 1.5}, "alpha must be a number in \\[0, 1\\], got 1.5"),
        ({"alpha": -0.1}, "alpha must be a number in \\[0, 1\\]"),
        ({"alpha": "0.5"}, "alpha must be float, got str '0.5'"),
        ({"attn_dropout": 1.0}, "attn_dropout must be a number in \\[0, 1\\)"),
        ({"beta": 1.0}, "unknown setting\\(s\\) beta for model bsarec; valid settings: objective: str in native\\|next = 'native', c: int = 5, alpha: float = 0.7, attn_dropout: float = 0.5"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message) as err:
        make_model(options=options)
    assert isinstance(err.value, DiffrecError) and "\n" not in str(err.value)


def test_options_reach_the_blocks_and_round_trip(tmp_path):
    model = make_model(dropout=0.3, options={"c": 7, "alpha": 0.25, "attn_dropout": 0.05})
    assert {(b.rescaler.bins, b.alpha, b.attn.dropout, b.drop.p, b.rescaler.drop.p) for b in model.blocks} == {(4, 0.25, 0.05, 0.3, 0.3)}
    assert make_model(options={"alpha": 1}).blocks[0].alpha == 1.0  # an integer from --option alpha=1
    defaults = build_model(RunConfig(model=ModelConfig(model="bsarec", hidden_size=D, num_heads=2, max_len=MAX_LEN)), N)
    assert defaults.options == {"objective": "native", "c": 5, "alpha": 0.7, "attn_dropout": 0.5}  # the authors' Beauty run
    config = RunConfig(model=ModelConfig(model="bsarec", options={"c": 3, "alpha": 0.0, "attn_dropout": 0.5}))
    config.save(tmp_path / "c.toml")
    loaded = RunConfig.load(tmp_path / "c.toml")
    assert loaded == config and isinstance(loaded.model.options["alpha"], float)


# --------------------------------------------------------------------------- presets and recipe


def test_presets_build_the_stated_models():
    tuned = {"loss": "ce", "hidden_size": 64, "num_blocks": 2, "num_heads": 1, "dropout": 0.5, "emb_dropout": 0.5, "max_len": 50}
    expected = {
        ("bsarec", "beauty"): ("bsarec", {"c": 5, "alpha": 0.7, "attn_dropout": 0.5}),
        ("bsarec", "toys"): ("bsarec", {"c": 5, "alpha": 0.7, "attn_dropout": 0.5}),
        ("bsarec-toys", "toys"): ("bsarec", {"c": 3, "alpha": 0.7, "attn_dropout": 0.5}),
        ("bsarec-sasrec", "beauty"): ("bsarec", {"c": 5, "alpha": 0.0, "attn_dropout": 0.5}),
        ("sasrec-ce-tuned", "beauty"): ("sasrec", {}),
        ("sasrec-ce-tuned", "toys"): ("sasrec", {}),
    }
    for (name, dataset), (model_name, options) in expected.items():
        config = preset_config(name, dataset, "bsarec", 1997, "x")
        assert config.model.model == model_name and config.model.settings == {"objective": "native", **options}, name
        assert {key: getattr(config.model, key) for key in tuned} == tuned, name
        assert "emb_init_std" not in config.model.settings  # not a setting of either model
        model = build_model(config, 40)
        if model_name == "bsarec":
            assert {b.alpha for b in model.blocks} == {options["alpha"]}
    assert {"bsarec", "bsarec-toys", "bsarec-sasrec", "sasrec-ce-tuned"} <= set(PRESETS)
    with pytest.raises(DiffrecError, match="does not support"):
        preset_config("bsarec", "beauty", "sequence", 1, "x")


def test_bsarec_recipe_is_the_authors_training():
    config = preset_config("bsarec", "beauty", "bsarec", 7, "x").train
    assert (config.examples, config.batch_size, config.lr, config.epochs, config.eval_every, config.patience) == ("prefix", 256, 5e-4, 200, 1, 10)
    assert config.lr_step >= config.epochs and {step_lr(config, e) for e in range(config.epochs)} == {5e-4}  # no decay in the budget
    assert (config.weight_decay, config.warmup_steps, config.seed) == (0.0, 0, 7)
    assert RECIPES["bsarec"]["model"] == {}


# --------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_learns_the_planted_structure(tmp_path):
    data = make_synthetic(num_users=500, num_items=100, seed=0)
    config = RunConfig(
        model=ModelConfig(
            model="bsarec", hidden_size=32, num_blocks=1, num_heads=1, max_len=20, dropout=0.1, emb_dropout=0.1, options={"c": 5, "alpha": 0.7, "attn_dropout": 0.1}
        ),
        train=TrainConfig(epochs=4, batch_size=64, lr=5e-3, eval_every=1, patience=4, seed=0),
        eval=EvalConfig(batch_size=512),
    )
    final = Trainer(config, data, tmp_path / "run", show_progress=False).fit()
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs[-1]["loss"] < epochs[0]["loss"] - 0.5, [e["loss"] for e in epochs]
    baseline = max(100 * 10 / data.num_items, 100 * popularity_hr_at_k(data, 10))  # random 10 %, popularity about 19 % here
    assert final["valid"]["HR@10"] > baseline + 20, (final["valid"], baseline)


@pytest.mark.parametrize("decay", [1.0, 0.6])
def test_the_causal_low_pass_is_the_decayed_mean_of_the_real_past(decay):
    """bsarec_causal's filter: position p holds sum gamma^(p-s) x_s / sum gamma^(p-s) over the real
    s <= p (the running mean for gamma = 1), zero at padding, and no padding value reaches it."""
    from diffrec.approximators.bsarec_causal import CausalRescaler

    rescaler = CausalRescaler(3, decay, 0.0)
    x = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = torch.tensor([[False, False, True, True, True, True], [False, False, False, False, True, True]])
    low = rescaler.low_pass(x, mask)
    for b in range(2):
        for p in range(6):
            past = [s for s in range(p + 1) if mask[b, s]]
            if not past:
                assert (low[b, p] == 0).all()
                continue
            w = torch.tensor([decay ** (p - s) for s in past], dtype=x.dtype)
            torch.testing.assert_close(low[b, p], (w[:, None] * x[b, past]).sum(0) / w.sum())
    if decay == 1.0:
        first = 2
        torch.testing.assert_close(low[0, first:], x[0, first:].cumsum(0) / torch.arange(1, 5, dtype=x.dtype)[:, None])
    noisy = x.clone()
    noisy[~mask] = 1e3
    torch.testing.assert_close(rescaler.low_pass(noisy, mask)[mask], low[mask])
    with pytest.raises(ConfigError, match="decay must lie in"):
        build_model(RunConfig(model=ModelConfig(model="diffurec", hidden_size=8, num_blocks=1, num_heads=1, max_len=6, settings={"approximator": {"name": "bsarec_causal", "decay": 0.0}})), 5)


def test_the_causal_bsarec_positions_count_from_the_first_real_item():
    """A history cut after p keeps its positions: with more left padding, every real state is the same."""
    config = ModelConfig(model="diffurec", hidden_size=8, num_blocks=2, num_heads=2, max_len=8, settings={"approximator": "bsarec_causal"})
    torch.manual_seed(0)
    approx = build_model(RunConfig(model=config), 5).approximator.eval()
    z = torch.randn(1, 5, 8)
    mask = torch.tensor([[False, True, True, True, True]])
    wider = torch.cat([torch.randn(1, 3, 8), z], 1)
    wide_mask = torch.cat([torch.zeros(1, 3, dtype=torch.bool), mask], 1)
    with torch.no_grad():
        states = approx.all_positions(z, mask, torch.zeros(1, dtype=torch.long))
        again = approx.all_positions(wider, wide_mask, torch.zeros(1, dtype=torch.long))
    torch.testing.assert_close(again[:, 3:][mask], states[mask], rtol=1e-5, atol=1e-6)
    assert approx.causal and not type(approx).reads_padding
