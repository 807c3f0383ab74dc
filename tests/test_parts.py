"""Every registered part, exercised for shapes, gradients and config round-trip.

The tests iterate over the registries, so a newly registered part is covered
without new test code.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from diffrec.config import ModelConfig, RunConfig
from diffrec.data.batching import Batch
from diffrec.registry import list_parts, registry
from diffrec.samplers import LossAwareSampler
from diffrec.schedules import GaussianDiffusion
from diffrec.building import build_model

PARTS = list_parts()
D, N, B = 16, 30, 5


def small_config(**changes) -> ModelConfig:
    base = dict(hidden_size=D, num_blocks=2, num_heads=2, max_len=8, diffusion_steps=32, emb_init_std=0.1)
    base.update(changes)
    return ModelConfig(**base)


def left_padded_batch(lengths, width, num_items=N, seed=0, max_len=8) -> Batch:
    g = torch.Generator().manual_seed(seed)
    seq = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        seq[i, width - n :] = torch.randint(1, num_items + 1, (n,), generator=g)
    target = torch.randint(1, num_items + 1, (len(lengths),), generator=g)
    pad_extra = torch.full((len(lengths),), max_len - width)
    return Batch(seq, target, pad_extra, torch.arange(len(lengths)))


@pytest.mark.parametrize("name", PARTS["approximator"])
@pytest.mark.parametrize("mask", ["official", "key_padding", "causal"])
def test_approximator_shape_gradient_and_trimming(name, mask):
    config = small_config(attention_mask=mask, dropout=0.0)
    approx = registry("approximator").build_from(name, config=config).eval()
    full = left_padded_batch([3, 8, 1, 5, 2], width=8)
    z = torch.randn(B, 8, D, requires_grad=True)
    out = approx(z, full.mask, full.pad_extra)
    assert out.shape == (B, D)
    weights = torch.randn(B, D, generator=torch.Generator().manual_seed(0))
    (out * weights).sum().backward()  # not out.sum(): a post-LayerNorm output sums to a constant
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert z.grad[:, -1].abs().sum() > 0
    if registry("approximator").get(name).reads_padding:
        return  # always given full windows (see the next test)
    # trimming padding (keeping one padding column) must not change the function when all
    # padding positions carry the same vector, as they do in the model at inference
    lengths = torch.tensor([3, 8, 1, 5, 2])
    zp = torch.randn(B, 8, D)
    pad_vec = torch.randn(D)
    zp[full.seq == 0] = pad_vec
    ref = approx(zp, full.mask, torch.zeros(B, dtype=torch.long))
    short = [0, 2, 4]  # rows of length <= 5, trimmed to width 6
    width = 6
    trimmed = approx(zp[short, -width:], full.mask[short, -width:], torch.full((3,), 8 - width))
    assert torch.allclose(trimmed, ref[short], atol=1e-5), (lengths, (trimmed - ref[short]).abs().max())


@pytest.mark.parametrize("name", PARTS["approximator"])
@pytest.mark.parametrize("mask", ["official", "key_padding"])
def test_diffurec_trims_padding_only_where_its_approximator_stays_exact(name, mask):
    """An approximator that reads the padding always gets full windows; the others too when
    position embeddings make the padding positions differ and the official mask lets them be seen."""
    reads = registry("approximator").get(name).reads_padding
    for positions in (False, True):
        model = build_model(RunConfig(model=small_config(attention_mask=mask, position_embedding=positions, approximator=name)), N)
        assert model.trims_padding_exactly is not (reads or (positions and mask == "official")), positions


@pytest.mark.parametrize("mask", ["official", "key_padding", "causal"])
def test_last_block_for_the_output_position_only_is_the_same_function(mask):
    config = small_config(attention_mask=mask, dropout=0.0, num_blocks=3)
    torch.manual_seed(0)
    full = registry("approximator").build("transformer", config=config)
    last = registry("approximator").build({"name": "transformer", "last_block_output_only": True}, config=config)
    last.load_state_dict(full.state_dict())
    batch = left_padded_batch([3, 8, 1, 5, 2], width=8)
    for pad_extra in (torch.zeros(B, dtype=torch.long), torch.full((B,), 4)):
        z = torch.randn(B, 8, D, requires_grad=True)
        zl = z.detach().clone().requires_grad_(True)
        want, got = full(z, batch.mask, pad_extra), last(zl, batch.mask, pad_extra)
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
        want.square().sum().backward()
        got.square().sum().backward()
        assert torch.allclose(zl.grad, z.grad, atol=1e-5)  # the same gradient, all positions included
        for (name, a), (_, b) in zip(full.named_parameters(), last.named_parameters()):
            assert torch.allclose(b.grad, a.grad, atol=1e-5), name
        full.zero_grad(), last.zero_grad()


def reference_official_attention(block, x, mask):
    """The public code's attention: padding query rows filled with -1e9, no key mask."""
    attn = block.attn
    B, L, d = x.shape
    h = block.ln1(x)
    q, k, v = attn.qkv(h).view(B, L, 3, attn.heads, d // attn.heads).permute(2, 0, 3, 1, 4)
    corr = q @ k.transpose(-2, -1) / (d // attn.heads) ** 0.5  # (B, H, L, L)
    rows = mask[:, None, :, None].expand_as(corr)
    corr = corr.masked_fill(~rows, -1e9)
    y = (torch.softmax(corr, -1) @ v).transpose(1, 2).reshape(B, L, d)
    x = x + attn.out(y)
    x = x + block.ffn(block.ln2(x))
    return x


def test_official_mask_matches_public_code_semantics():
    config = small_config(attention_mask="official", dropout=0.0, num_blocks=1)
    approx = registry("approximator").build_from("transformer", config=config).eval()
    batch = left_padded_batch([3, 8, 1, 5, 2], width=8)
    z = torch.randn(B, 8, D)
    ours = approx(z, batch.mask, torch.zeros(B, dtype=torch.long))
    ref = reference_official_attention(approx.blocks[0], z, batch.mask)[:, -1]
    assert torch.allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("name", PARTS["schedule"])
def test_schedule_builds_a_diffusion(name):
    diff = GaussianDiffusion(registry("schedule").build(name), 32)
    x0 = torch.randn(B, D)
    xt = diff.add_noise(x0, torch.randn(B, D), torch.randint(0, 32, (B,)))
    assert xt.shape == x0.shape and torch.isfinite(xt).all()


@pytest.mark.parametrize("name", PARTS["loss"])
def test_loss_shape_and_gradient(name):
    loss = registry("loss").build_from(name, over_padding=True, config=small_config())
    x0_hat = torch.randn(B, D, requires_grad=True)
    items = torch.randn(N + 1, D, requires_grad=True)
    targets = torch.randint(1, N + 1, (B,))
    values = loss(x0_hat, items, targets)
    assert values.shape == ((B,) if loss.per_example else ())
    assert torch.isfinite(values).all() and (values >= 0).all()
    values.mean().backward()
    assert x0_hat.grad.abs().sum() > 0 and items.grad.abs().sum() > 0


@pytest.mark.parametrize("over_padding", [True, False])
def test_ce_losses_padding_option_and_the_fused_path(over_padding, monkeypatch):
    from diffrec import losses

    ce = registry("loss").build_from("ce", over_padding=over_padding)
    fused = registry("loss").build_from("ce_fused", over_padding=over_padding, backend="torch")
    forced = registry("loss").build_from({"name": "ce", "fused": "always"}, over_padding=over_padding, backend="torch")
    x0 = torch.randn(B, D, requires_grad=True)
    items = torch.randn(N + 1, D, requires_grad=True)
    targets = torch.randint(1, N + 1, (B,))
    logits = x0 @ items.t()
    want = torch.nn.functional.cross_entropy(logits if over_padding else logits[:, 1:], targets if over_padding else targets - 1, reduction="none")
    got = ce(x0, items, targets)
    assert torch.allclose(got, want, atol=1e-6)
    weights = torch.rand(B)  # a learning sampler's reweighting of each example
    g_ce = torch.autograd.grad((got * weights).sum(), (x0, items))
    monkeypatch.setattr(losses, "FUSE_ABOVE", N)  # "auto" fuses a catalogue of N + 1 rows
    for loss in (fused, forced, ce):
        values = loss(x0, items, targets)
        assert values.shape == (B,)
        assert torch.allclose(values, want, atol=1e-5)
        for a, b in zip(g_ce, torch.autograd.grad((values * weights).sum(), (x0, items))):
            assert torch.allclose(a, b, atol=1e-5)


def test_the_fused_loss_feeds_a_learning_sampler():
    model = build_model(RunConfig(model=small_config(loss="ce_fused", timestep_sampler="loss_aware")), N)
    model.train()
    loss = model.calculate_loss(left_padded_batch([3, 5, 8, 2, 6], 8))
    loss.backward()
    assert torch.isfinite(loss) and int(model.timestep_sampler.counts.sum()) == 5


@pytest.mark.parametrize("name", PARTS["rounding"])
def test_rounding_recovers_an_item(name):
    rounding = registry("rounding").build_from(name)
    items = torch.nn.functional.normalize(torch.randn(N + 1, D), dim=-1)
    ids = torch.tensor([1, 7, 30])
    scores = rounding.scores(items[ids], items)
    assert scores.shape == (3, N + 1)
    assert scores.argmax(1).tolist() == ids.tolist()
    # top-k never returns padding or excluded ids, and agrees with the dense scores
    exclude = torch.tensor([[0, 0], [7, 3], [30, 0]])
    top_scores, top_ids = rounding.topk(items[ids], items, 4, exclude)
    assert top_ids.shape == (3, 4)
    for row in range(3):
        banned = {0, *exclude[row].tolist()}
        assert not banned & set(top_ids[row].tolist())
        allowed = [i for i in range(N + 1) if i not in banned]
        best = sorted(allowed, key=lambda i: (-scores[row, i].item(), i))[:4]
        assert torch.allclose(scores[row, best], top_scores[row], atol=1e-5)


@pytest.mark.parametrize("name", PARTS["timestep_sampler"])
def test_timestep_sampler_contract(name):
    sampler = registry("timestep_sampler").build_from(name, num_steps=12)
    t, w = sampler.sample(64, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert t.shape == (64,) and w.shape == (64,)
    assert t.dtype == torch.long and t.min() >= 0 and t.max() < 12 and (w > 0).all()
    sampler.update(t, torch.rand(64))
    state = sampler.state_dict()
    clone = registry("timestep_sampler").build_from(name, num_steps=12)
    clone.load_state_dict(state)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sampler.sample(32, torch.device("cpu"), g1)[0], clone.sample(32, torch.device("cpu"), g2)[0])


def test_loss_aware_sampler_learns_from_losses():
    sampler = LossAwareSampler(num_steps=4, history=5)
    assert torch.allclose(sampler.weights(), torch.ones(4, dtype=torch.float64))
    for _ in range(5):
        t = torch.arange(4)
        sampler.update(t, torch.tensor([1.0, 1.0, 1.0, 9.0]))
    assert sampler.warmed_up()
    w = sampler.weights()
    assert w[3] > 2 * w[0]
    t, importance = sampler.sample(4000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert (t == 3).float().mean() > 0.6
    # importance weights keep the loss unbiased: E_p[1 / (T p_t)] = 1
    assert importance.mean().item() == pytest.approx(1.0, rel=0.1)


@pytest.mark.parametrize("name", PARTS["reverse_sampler"])
def test_reverse_sampler_is_seeded(name):
    sampler = registry("reverse_sampler").build_from(name)
    diff = GaussianDiffusion(registry("schedule").build("trunc_lin"), 12)
    calls = []

    def denoise(x, t):
        calls.append(int(t[0]))
        return torch.tanh(x)

    out1 = sampler.sample(denoise, diff, torch.randn(B, D, generator=torch.Generator().manual_seed(1)), torch.Generator().manual_seed(2))
    out2 = sampler.sample(denoise, diff, torch.randn(B, D, generator=torch.Generator().manual_seed(1)), torch.Generator().manual_seed(2))
    assert out1.shape == (B, D) and torch.equal(out1, out2)
    assert calls[0] == 11 and calls[-1] in (0, 11)


def part_configs():
    for kind in ("approximator", "schedule", "loss", "rounding", "timestep_sampler", "reverse_sampler", "model"):
        for name in PARTS[kind]:
            yield pytest.param(kind, name, id=f"{kind}-{name}")


@pytest.mark.parametrize("kind,name", list(part_configs()))
def test_every_part_trains_predicts_and_round_trips(kind, name, tmp_path):
    config = RunConfig(model=small_config(**{kind: name}))
    path = tmp_path / "config.toml"
    config.save(path)
    loaded = RunConfig.load(path)
    assert loaded == config
    torch.manual_seed(0)
    model = build_model(loaded, N)
    batch = left_padded_batch([3, 8, 1, 5, 2], width=8)
    loss = model.calculate_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    model.eval()
    scores = model.full_sort_predict(batch, torch.Generator().manual_seed(0))
    assert scores.shape == (B, N + 1) and not torch.isnan(scores).any() and not torch.isposinf(scores).any()  # -inf: not ranked (approximate roundings)
    assert torch.isfinite(scores[:, 1:]).any(1).all()
    again = model.full_sort_predict(batch, torch.Generator().manual_seed(0))
    assert torch.equal(scores, again)
    # the rebuilt model from the saved config has the same parameter shapes
    rebuilt = build_model(RunConfig.load(path), N)
    from diffrec.checkpoint import model_tensors

    assert {k: v.shape for k, v in model_tensors(rebuilt).items()} == {k: v.shape for k, v in model_tensors(model).items()}


def test_config_rejects_bad_values(tmp_path):
    from diffrec.errors import DiffrecError

    with pytest.raises(DiffrecError, match="attention_mask must be one of official, key_padding, causal"):
        small_config(attention_mask="diagonal").validate()
    with pytest.raises(DiffrecError, match="divisible"):
        small_config(hidden_size=10, num_heads=3).validate()
    path = tmp_path / "c.toml"
    path.write_text("[model]\nhidden_size = 'big'\n")
    with pytest.raises(DiffrecError, match="hidden_size must be int"):
        RunConfig.load(path)
    path.write_text("[model]\nwidth = 3\n")
    with pytest.raises(DiffrecError, match="unknown setting\\(s\\) width for model diffurec; valid settings: schedule"):
        RunConfig.load(path).validate()  # the model's declaration decides, so a key is checked once the model is known
    path.write_text("[model\n")
    with pytest.raises(DiffrecError, match="not valid TOML"):
        RunConfig.load(path)
    assert dataclasses.asdict(RunConfig.from_dict({"train": {"lr": 1}}).train)["lr"] == 1.0
