import math

import pytest
import torch

from diffrec.layers import DROPOUT_RNGS, Dropout, counter_keep_mask, splitmix64


@pytest.mark.parametrize("rng", DROPOUT_RNGS)
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_dropout_matches_torch_in_distribution(p, rng):
    torch.manual_seed(0)
    layer = Dropout(p, rng)
    x = torch.ones(400_000)
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert abs(y.mean().item() - 1.0) < 0.01  # inverted dropout keeps the expectation


@pytest.mark.parametrize("rng", DROPOUT_RNGS)
def test_dropout_gradient_and_modes(rng):
    layer = Dropout(0.3, rng)
    x = torch.randn(64, 32, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert torch.equal(x.grad != 0, y != 0)  # the gradient flows through the kept units only
    assert torch.allclose(x.grad[y != 0], torch.full_like(x.grad[y != 0], 1 / 0.7))
    layer.eval()
    assert layer(x) is x
    assert torch.equal(Dropout(1.0, rng)(x), torch.zeros_like(x))
    assert Dropout(0.0, rng)(x) is x
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert Dropout(0.3, rng).train()(x.detach().bfloat16()).dtype == torch.bfloat16


def test_an_unknown_dropout_generator_is_refused():
    with pytest.raises(ValueError, match="valid: torch, counter"):
        Dropout(0.1, "philox")


def splitmix64_reference(key: int, n: int) -> list[int]:
    """SplitMix64 as published: state += gamma, then the two xor-shift-multiply rounds."""
    out, state, m = [], key % 2**64, 2**64 - 1
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & m
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        out.append(z ^ (z >> 31))
    return out


@pytest.mark.parametrize("key", [0, 1, 2**62 + 12345, 2**63 - 2])
def test_splitmix64_is_the_published_generator(key):
    got = [v % 2**64 for v in splitmix64(key, 300).tolist()]
    assert got == splitmix64_reference(key, 300)
    if key == 0:
        assert got[0] == 0xE220A8397B1DCDAF  # the generator's well-known first output from seed 0


def binomial_ok(count: int, n: int, q: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * q) <= sigmas * math.sqrt(n * q * (1 - q))


@pytest.mark.parametrize("keep", [0.5, 0.7, 0.9, 0.999])
def test_counter_masks_are_iid_bernoulli(keep):
    n = 1_000_001  # odd: the last word's second half is cut off
    m = counter_keep_mask(torch.Size([n]), keep, key=2024).long()
    assert binomial_ok(int(m.sum()), n, keep)
    for lag in (1, 2, 7, 64):  # lag 1 pairs the two halves of one word and neighbouring words
        assert binomial_ok(int((m[:-lag] & m[lag:]).sum()), n - lag, keep * keep)
        assert binomial_ok(int(((1 - m[:-lag]) & (1 - m[lag:])).sum()), n - lag, (1 - keep) ** 2)
    other = counter_keep_mask(torch.Size([n]), keep, key=2025).long()  # the next call's key
    assert binomial_ok(int((m & other).sum()), n, keep * keep)


def test_counter_halves_are_uniform():
    halves = splitmix64(7, 500_000).view(torch.int32).long() + 2**31  # 10^6 values in [0, 2^32)
    counts = torch.bincount(halves >> 24, minlength=256).double()  # the top byte
    chi2 = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())
    assert 150 < chi2 < 380  # 255 degrees of freedom: far outside this would be p < 1e-6
    low = torch.bincount(halves & 255, minlength=256).double()  # and the bottom byte
    assert 150 < float(((low - low.mean()) ** 2 / low.mean()).sum()) < 380


def test_counter_masks_follow_torch_seed_and_state():
    x = torch.ones(10_000)
    layer = Dropout(0.3, "counter")
    torch.manual_seed(5)
    a, b = layer(x), layer(x)
    assert not torch.equal(a, b)  # every call draws a new key
    torch.manual_seed(5)
    assert torch.equal(layer(x), a)
    state = torch.get_rng_state()
    c = layer(x)
    torch.set_rng_state(state)  # what a checkpoint restores on resume
    assert torch.equal(layer(x), c)
    mask = counter_keep_mask(torch.Size([3, 5, 7]), 0.6, key=11)
    assert mask.shape == (3, 5, 7) and mask.dtype == torch.bool


def test_off_the_cpu_the_torch_generator_is_torchs_fused_dropout(monkeypatch):
    calls = []
    real = torch.nn.functional.dropout
    monkeypatch.setattr(torch.nn.functional, "dropout", lambda x, p, training: calls.append((x.device.type, p, training)) or real(x, p, training))
    x = torch.ones(4, 8, device="meta")
    assert Dropout(0.25)(x).shape == (4, 8) and calls == [("meta", 0.25, True)]
    Dropout(0.25)(torch.ones(4, 8))  # the CPU keeps the reference's draws
    assert len(calls) == 1
