"""The same-protocol baselines (SASRec, GRU4Rec, BERT4Rec, Caser, STOSA) and the sampled losses."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from diffrec.cli.main import app
from typer.testing import CliRunner

# importing the model modules registers them (and the bce/bpr losses)
import diffrec.models.bert4rec
import diffrec.models.caser
import diffrec.models.gru4rec
import diffrec.models.sasrec
import diffrec.models.stosa  # noqa: F401
from diffrec.config import EvalConfig, ModelConfig, RunConfig, TrainConfig
from diffrec.data import make_synthetic
from diffrec.data.batching import Batch
from diffrec.data.synthetic import popularity_hr_at_k
from diffrec.errors import ConfigError
from diffrec.models.baselines import BaselineRecommender
from diffrec.registry import registry
from diffrec.sampled_losses import sample_negatives
from diffrec.building import build_model, sequence_example_models
from diffrec.trainer import Trainer

MODELS = ["sasrec", "gru4rec", "bert4rec", "caser", "stosa"]
NATIVE_LOSS = {"sasrec": "bce", "gru4rec": "bpr", "bert4rec": "ce", "caser": "bce", "stosa": "bpr"}
D, N, MAX_LEN = 16, 30, 8


def make_model(name: str, **changes) -> torch.nn.Module:
    base = {"model": name, "hidden_size": D, "num_blocks": 2, "num_heads": 2, "max_len": MAX_LEN, "dropout": 0.0, "emb_dropout": 0.0}
    base.update(changes)
    torch.manual_seed(0)
    return build_model(RunConfig(model=ModelConfig(**base)), N)


def padded_batch(histories: list[list[int]], width: int, targets: list[int] | None = None) -> Batch:
    seq = torch.zeros(len(histories), width, dtype=torch.long)
    for row, items in enumerate(histories):
        seq[row, width - len(items) :] = torch.tensor(items)
    target = torch.tensor(targets if targets is not None else [1 + i % N for i in range(len(histories))])
    return Batch(seq, target, torch.full((len(histories),), MAX_LEN - width), torch.arange(len(histories)))


HISTORIES = [[3, 7, 1], [2], [5, 9, 30, 4], [8, 8], [11, 12, 13, 14]]  # longest 4: trimmed width 5


# --------------------------------------------------------------------------- sampled losses


def test_negative_sampling_never_returns_the_target_or_padding():
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(1, N + 1, (20000,), generator=g)
    negatives = sample_negatives(targets, N, g)
    assert negatives.min() >= 1 and negatives.max() <= N
    assert not (negatives == targets).any()
    # uniform over the other N - 1 ids: every id shows up for a fixed target, none much more than others
    counts = torch.bincount(sample_negatives(torch.full((29000,), 7), N, g), minlength=N + 1)
    assert counts[0] == 0 and counts[7] == 0
    others = counts[[i for i in range(1, N + 1) if i != 7]].float()
    assert others.min() > 0.8 * 1000 and others.max() < 1.2 * 1000
    assert torch.equal(sample_negatives(torch.tensor([1, 2, 1]), 2), torch.tensor([2, 1, 2]))
    with pytest.raises(ConfigError, match="at least 2 items"):
        sample_negatives(torch.tensor([1]), 1)


def test_bce_and_bpr_match_hand_computed_values():
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    items = torch.tensor([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets, negatives = torch.tensor([1, 3]), torch.tensor([2, 1])
    # scores: row 0 s+ = 1, s- = 2; row 1 s+ = -0.5, s- = 0.5
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))
    bce = registry("loss").build_from("bce", over_padding=True)
    bpr = registry("loss").build_from("bpr", over_padding=True)
    want_bce = [-math.log(sig(1.0)) - math.log(1 - sig(2.0)), -math.log(sig(-0.5)) - math.log(1 - sig(0.5))]
    want_bpr = [-math.log(sig(1.0 - 2.0)), -math.log(sig(-0.5 - 0.5))]
    assert torch.allclose(bce(x, items, targets, negatives=negatives), torch.tensor(want_bce), atol=1e-6)
    assert torch.allclose(bpr(x, items, targets, negatives=negatives), torch.tensor(want_bpr), atol=1e-6)
    # without given negatives they are sampled: still one loss per example
    assert bce(x, items, targets).shape == (2,) and bce.per_example and bpr.per_example


# --------------------------------------------------------------------------- model contract


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_gradients(name):
    model = make_model(name, loss=NATIVE_LOSS[name])
    batch = padded_batch(HISTORIES, MAX_LEN)
    loss = model.calculate_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    assert sum(g.abs().sum() for g in grads.values() if g is not None) > 0
    model.eval()
    scores = model.full_sort_predict(batch)
    assert scores.shape == (len(HISTORIES), N + 1) and torch.isfinite(scores).all()
    items = torch.tensor([[1, 2, 3]] * len(HISTORIES))
    assert torch.allclose(model.predict(batch, items), scores.gather(1, items))
    _, top = model.recommend(batch, 5, batch.seq)
    for row, hist in enumerate(HISTORIES):
        assert not {0, *hist} & set(top[row].tolist())


@pytest.mark.parametrize("name", MODELS)
def test_trimmed_batches_give_the_same_scores(name):
    model = make_model(name).eval()
    assert model.trims_padding_exactly
    full = model.full_sort_predict(padded_batch(HISTORIES, MAX_LEN))
    trimmed = model.full_sort_predict(padded_batch(HISTORIES, 5))
    assert torch.allclose(full, trimmed, atol=1e-5), (full - trimmed).abs().max()
    short = [[4], [6, 2]]  # narrower than Caser's window of 5
    assert torch.allclose(model.full_sort_predict(padded_batch(short, MAX_LEN)), model.full_sort_predict(padded_batch(short, 3)), atol=1e-5)


# --------------------------------------------------------------------------- sequence examples

SEQUENCE_MODELS = [name for name in MODELS if registry("model").get(name).supports_sequence_examples]
#: the models that score every position of a sequence example (BERT4Rec instead cloze-masks it)
CAUSAL_MODELS = [name for name in SEQUENCE_MODELS if registry("model").get(name).query_states is not BaselineRecommender.query_states]


def sequence_batch(histories: list[list[int]], width: int) -> Batch:
    """Inputs ``h[:-1]`` with the item after each position, ``h[1:]``, left-padded to ``width``."""
    batch = padded_batch([h[:-1] for h in histories], width, [h[-1] for h in histories])
    nxt = torch.zeros_like(batch.seq)
    for row, items in enumerate(histories):
        nxt[row, width - len(items) + 1 :] = torch.tensor(items[1:])
    batch.next_items = nxt
    return batch


SEQUENCES = [[3, 7, 1, 9], [2, 5], [5, 9, 30, 4, 6], [8, 8, 8], [11, 12, 13, 14, 15, 16]]  # longest input 5


def test_which_baselines_train_on_sequence_examples():
    assert SEQUENCE_MODELS == ["sasrec", "gru4rec", "bert4rec", "stosa"]  # not Caser, whose windows are its own
    assert CAUSAL_MODELS == ["sasrec", "gru4rec", "stosa"]  # BERT4Rec is bidirectional
    assert sequence_example_models() == ["bert4rec", "dreamrec", "gru4rec", "sasrec", "stosa"]  # every registered model, DiffuRec not among them


@pytest.mark.parametrize("name", CAUSAL_MODELS)
def test_each_position_state_is_the_query_of_its_prefix(name):
    """Position j's state equals query() of the batch cut after column j (same window positions):
    states are causal and aligned with the input, and the last one is query()."""
    model = make_model(name).eval()
    batch = sequence_batch(SEQUENCES, 6)
    states = model.query_states(batch)  # (B, L, k)
    assert torch.allclose(states[:, -1], model.query(batch), atol=1e-5)
    for j in range(batch.seq.shape[1]):
        cut = Batch(batch.seq[:, : j + 1], batch.target, batch.pad_extra, batch.users)
        real = batch.seq[:, j] > 0
        assert torch.allclose(states[real, j], model.query(cut)[real], atol=1e-5), (name, j)


@pytest.mark.parametrize("name", CAUSAL_MODELS)
def test_sequence_loss_averages_every_position(name):
    """With ce (deterministic), the loss of a sequence batch is the mean cross-entropy of every real
    position's query against the item after it."""
    model = make_model(name, loss="ce", options={"objective": "next"}).eval()
    batch = sequence_batch(SEQUENCES, 6)
    queries, targets = [], []
    for j in range(batch.seq.shape[1]):
        cut = Batch(batch.seq[:, : j + 1], batch.target, batch.pad_extra, batch.users)
        real = batch.seq[:, j] > 0
        queries.append(model.query(cut)[real])
        targets.append(batch.next_items[real, j])
    logits = torch.cat(queries) @ model.item_table().t()
    want = F.cross_entropy(logits, torch.cat(targets))
    assert len(torch.cat(targets)) == batch.num_targets == sum(len(h) - 1 for h in SEQUENCES)
    assert torch.allclose(model.calculate_loss(batch), want, atol=1e-5)


def test_bert4rec_cloze_masks_the_whole_window_of_a_sequence_example(monkeypatch):
    """A sequence example's cloze input is the user's window (input + last target): the last item is
    always masked, any other real item with probability mask_prob, padding never; each masked
    position is scored against its own item."""
    model = make_model("bert4rec", options={"mask_prob": 0.5})
    batch = sequence_batch(SEQUENCES, 6)
    windows = torch.cat([batch.seq, batch.target[:, None]], dim=1)  # (B, 7)
    encode, inputs, scored = model.encode, [], []
    monkeypatch.setattr(model, "encode", lambda tokens, b: inputs.append(tokens) or encode(tokens, b))
    monkeypatch.setattr(model, "target_loss", lambda query, targets: scored.append(targets) or query.sum(-1))
    torch.manual_seed(1)
    draws = 400
    counts = torch.zeros(windows.shape)
    for _ in range(draws):
        inputs.clear(), scored.clear()
        model.calculate_loss(batch)
        masked = inputs[0] == model.mask_id  # (B, 7)
        assert torch.equal(inputs[0][~masked], windows[~masked])  # the rest of the window is kept
        assert torch.equal(scored[0], windows[masked])  # each masked position predicts its own item
        counts += masked
    real = windows > 0
    assert (counts[:, -1] == draws).all()  # the last target, every time
    assert (counts[~real] == 0).all()  # never padding
    rate = counts[:, :-1][real[:, :-1]] / draws
    assert ((rate > 0.4) & (rate < 0.6)).all(), rate  # every other item about half the time


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_sequence_examples_shapes_and_gradients(name):
    model = make_model(name, loss=NATIVE_LOSS[name], dropout=0.1, emb_dropout=0.1)
    loss = model.calculate_loss(sequence_batch(SEQUENCES, MAX_LEN))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize(
    "name, message",
    [
        ("caser", "'caser' trains on prefix examples only.*bert4rec, dreamrec, gru4rec, sasrec, stosa"),
        ("diffurec", "'diffurec' as configured trains on prefix examples only; .*injection=own_position and a causal approximator"),
    ],
)
def test_prefix_only_models_refuse_sequence_examples(name, message, tmp_path):
    config = RunConfig(model=ModelConfig(model=name, hidden_size=16, num_blocks=1, num_heads=2, max_len=8), train=TrainConfig(examples="sequence"))
    with pytest.raises(ConfigError, match=message):
        Trainer(config, make_synthetic(num_users=50, num_items=20, seed=0), tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_a_sequence_epoch_trains_and_counts_every_pair(tmp_path):
    data = make_synthetic(num_users=80, num_items=40, seed=1)
    config = RunConfig(model=ModelConfig(model="sasrec", loss="bce", hidden_size=16, num_blocks=1, num_heads=2, max_len=50), train=TrainConfig(examples="sequence", batch_size=8))
    trainer = Trainer(config, data, tmp_path / "run", show_progress=False)
    _, _, pairs = trainer.train_epoch(0)
    # max_len exceeds every training part here, so the sequence examples hold every prefix pair
    assert pairs == trainer.examples.num_targets == sum(len(s) - 3 for s in data.sequences if len(s) >= 4)
    assert len(trainer.examples) == sum(len(s) >= 4 for s in data.sequences)


def test_cli_refuses_sequence_examples_for_a_prefix_only_model(tmp_path):
    result = CliRunner().invoke(app, ["train", "--model", "caser", "--examples", "sequence", "--data", "synthetic", "--out", str(tmp_path / "run"), "-q"])
    assert result.exit_code != 0
    assert "error: model 'caser' trains on prefix examples only" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_unknown_example_type_is_refused():
    with pytest.raises(Exception, match="unknown training examples 'window'; valid choices: prefix, sequence"):
        RunConfig(train=TrainConfig(examples="window")).validate()


@pytest.mark.parametrize("over_padding", [True, False])
@pytest.mark.parametrize("name", MODELS)
def test_ce_next_objective_is_diffurecs_cross_entropy(name, over_padding):
    """loss=ce with objective=next: softmax CE of the ranking scores, padding as ce_over_padding says."""
    model = make_model(name, loss="ce", ce_over_padding=over_padding, options={"objective": "next"}).eval()
    batch = padded_batch(HISTORIES, 5)
    logits = model.full_sort_predict(batch)
    want = F.cross_entropy(logits if over_padding else logits[:, 1:], batch.target if over_padding else batch.target - 1)
    assert torch.allclose(model.calculate_loss(batch), want, atol=1e-5)


def test_stosa_scores_are_negative_wasserstein_distances():
    model = make_model("stosa").eval()
    batch = padded_batch(HISTORIES, 5)
    mean, cov = model.sequence_gaussian(batch)  # (B, L, d)
    mean, cov = mean[:, -1], cov[:, -1]  # (B, d)
    item_mean, item_std = model.item_gaussians()
    want = -((mean[:, None] - item_mean[None]).pow(2).sum(-1) + (cov.sqrt()[:, None] - item_std[None]).pow(2).sum(-1))
    assert (cov > 0).all()
    assert torch.allclose(model.full_sort_predict(batch), want, atol=1e-4)


def test_stosa_native_objective_adds_the_positive_negative_regulariser():
    weight = 0.5
    model = make_model("stosa", loss="bpr", options={"pvn_weight": weight}).eval()
    batch = padded_batch(HISTORIES, 5)
    torch.manual_seed(3)
    negatives = sample_negatives(batch.target, N)
    query, table = model.query(batch), model.item_table()
    bpr = F.softplus((query * table[negatives]).sum(-1) - (query * table[batch.target]).sum(-1)).mean()
    mean, std = model.item_gaussians()
    d_seq_pos = -(query * table[batch.target]).sum(-1)
    d_pos_neg = (mean[batch.target] - mean[negatives]).pow(2).sum(-1) + (std[batch.target] - std[negatives]).pow(2).sum(-1)
    torch.manual_seed(3)
    got = model.calculate_loss(batch)
    assert torch.allclose(got, bpr + weight * F.relu(d_seq_pos - d_pos_neg).mean(), atol=1e-5)
    model.options["objective"] = "next"
    torch.manual_seed(3)
    assert torch.allclose(model.calculate_loss(batch), bpr, atol=1e-5)


def test_stosa_attention_dropout_is_its_own_option():
    model = make_model("stosa", dropout=0.3, options={"attn_dropout": 0.05})  # distinct values: a swap would show
    assert {(b.attn_dropout.p, b.drop.p) for b in model.blocks} == {(0.05, 0.3)}
    assert {b.attn_dropout.p for b in make_model("stosa").blocks} == {0.1}  # default: the dropout the earlier runs used
    for bad in (1.0, -0.1, "0.2", True):
        with pytest.raises(ConfigError, match="attn_dropout must (be float|lie in)"):
            make_model("stosa", options={"attn_dropout": bad})


@pytest.mark.parametrize("objective,mask_prob,more_than_targets", [("native", 0.0, False), ("native", 0.9, True), ("next", 0.9, False)])
def test_bert4rec_cloze_masks_the_target_and_prefix_positions(objective, mask_prob, more_than_targets):
    model = make_model("bert4rec", options={"objective": objective, "mask_prob": mask_prob})
    batch = padded_batch(HISTORIES, 5)
    seen = {}
    inner = model.target_loss

    def record(query, targets, negatives=None):
        seen["targets"] = targets
        return inner(query, targets, negatives)

    model.target_loss = record
    torch.manual_seed(0)
    model.calculate_loss(batch)
    targets = seen["targets"]
    assert (targets > 0).all()  # padding is never a cloze target
    assert set(batch.target.tolist()) <= set(targets.tolist())  # every example's target is masked
    assert (len(targets) > len(batch)) == more_than_targets


def test_options_are_validated_and_round_trip(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting"):
        make_model("sasrec", options={"mask_prob": 0.3})
    with pytest.raises(ConfigError, match="objective"):
        make_model("gru4rec", options={"objective": "cloze"})
    with pytest.raises(ConfigError, match="mask_prob"):
        make_model("bert4rec", options={"mask_prob": 1.5})
    config = RunConfig(model=ModelConfig(model="bert4rec", options={"objective": "next", "mask_prob": 0.3}))
    config.save(tmp_path / "c.toml")
    assert RunConfig.load(tmp_path / "c.toml") == config


def test_sampled_losses_train_diffurec():
    model = build_model(RunConfig(model=ModelConfig(hidden_size=D, num_blocks=1, num_heads=2, max_len=MAX_LEN, loss="bpr")), N)
    loss = model.calculate_loss(padded_batch(HISTORIES, MAX_LEN))
    assert torch.isfinite(loss) and loss > 0


# --------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(num_users=600, num_items=120, seed=0)


RECIPES = [pytest.param(name, NATIVE_LOSS[name], {}, id=f"{name}-native") for name in MODELS]
RECIPES += [pytest.param(name, "ce", {"objective": "next"}, id=f"{name}-ce-next") for name in MODELS]
RECIPES += [pytest.param(name, NATIVE_LOSS[name], {"examples": "sequence"}, id=f"{name}-native-sequence") for name in SEQUENCE_MODELS]


@pytest.mark.slow
@pytest.mark.parametrize("name,loss,options", RECIPES)
def test_learns_the_planted_structure(name, loss, options, synthetic, tmp_path):
    options = dict(options)
    examples = options.pop("examples", "prefix")
    batch_size = 16 if examples == "sequence" else 64  # a sequence example holds about 4 prefix examples here
    # a cloze over whole windows supervises only the masked items, 30 % of the pairs here
    epochs = 10 if examples == "sequence" and name == "bert4rec" else 3
    config = RunConfig(
        model=ModelConfig(model=name, loss=loss, hidden_size=32, num_blocks=1, num_heads=2, max_len=20, dropout=0.1, emb_dropout=0.1, options=options),
        train=TrainConfig(epochs=epochs, batch_size=batch_size, lr=5e-3, eval_every=epochs, seed=0, examples=examples),
        eval=EvalConfig(batch_size=512),
    )
    final = Trainer(config, synthetic, tmp_path / "run", show_progress=False).fit()
    popularity = 100 * popularity_hr_at_k(synthetic, 10)  # about 14 here
    assert final["test"]["HR@10"] > popularity + 20, (final["test"], popularity)


def test_cli_trains_a_baseline(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "sasrec", "--loss", "bce", "--option", "objective=next", "--data", "synthetic", "--out", str(out)]
    args += ["--epochs", "1", "--hidden-size", "32", "--num-blocks", "1", "--num-heads", "2", "--max-len", "20", "--batch-size", "256", "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    final = json.loads((out / "metrics.json").read_text())
    assert final["epochs_run"] == 1 and 0 <= final["test"]["HR@10"] <= 100
    assert 'objective = "next"' in (out / "config.toml").read_text()
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(out), "--json"])
    assert result.exit_code == 0, result.output
