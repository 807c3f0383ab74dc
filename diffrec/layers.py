"""Small building blocks shared by the models: dropout with a choice of mask generator.

Two generators draw the same distribution, an i.i.d. Bernoulli(1 - p) keep mask with the
kept values scaled by 1 / (1 - p):

- ``"torch"``: ``rand < 1 - p`` from torch's generator on the CPU (the reference; every stored
  run), torch's own fused dropout on other devices.
- ``"counter"``: a counter-based hash. One 63-bit key is drawn from torch's generator per
  call (so ``torch.manual_seed`` and the checkpointed RNG state still fix every mask), and
  element pairs take the two 32-bit halves of SplitMix64(key + i * gamma), i = 1, 2, ...
  (Steele, Lea, Flood, OOPSLA 2014). Each half is compared with round((1 - p) * 2^32), so the
  keep rate is exact to 2^-33 (torch's float32 ``rand`` resolves 2^-24). The hash costs
  about a third of ``rand`` on the CPU.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

DropoutRNG = Literal["torch", "counter"]
DROPOUT_RNGS: tuple[str, ...] = get_args(DropoutRNG)

# SplitMix64's increment and finaliser multipliers, as signed int64 (torch wraps int64 products)
_GAMMA = 0x9E3779B97F4A7C15 - 2**64
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64


def _logical_shift_xor(z: torch.Tensor, shift: int) -> torch.Tensor:
    """z ^= z >>> shift on int64 (torch's >> sign-extends, so the top bits are masked off)."""
    return z.bitwise_xor_(z.bitwise_right_shift(shift).bitwise_and_((1 << (64 - shift)) - 1))


def splitmix64(key: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """n uniform 64-bit words SplitMix64(key + i * gamma), i = 1..n: (n,) int64."""
    z = torch.arange(1, n + 1, dtype=torch.int64, device=device).mul_(_GAMMA).add_(key)
    z = _logical_shift_xor(z, 30).mul_(_MIX1)
    z = _logical_shift_xor(z, 27).mul_(_MIX2)
    return _logical_shift_xor(z, 31)


def counter_keep_mask(shape: torch.Size, keep: float, key: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool mask of ``shape``, i.i.d. True with probability ``keep`` (to 2^-33), from one key."""
    numel = shape.numel()
    halves = splitmix64(key, (numel + 1) // 2, device).view(torch.int32)[:numel]  # uniform over int32
    threshold = round(keep * 2**32) - 2**31  # P(half < threshold) = round(keep * 2^32) / 2^32
    return (halves < threshold).view(shape)


def draw_key() -> int:
    """A 63-bit key from torch's default CPU generator, whatever device the data is on."""
    return int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64))


def _check_rng(rng: str) -> None:
    if rng not in DROPOUT_RNGS:
        raise ValueError(f"unknown dropout generator {rng!r} (valid: {', '.join(DROPOUT_RNGS)})")


def dropout(x: torch.Tensor, p: float, training: bool = True, rng: DropoutRNG = "torch") -> torch.Tensor:
    """Inverted dropout of ``x`` with the mask from ``rng`` (see the module docstring)."""
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return torch.zeros_like(x)
    _check_rng(rng)
    keep = 1.0 - p
    if rng == "counter":
        keep_mask = counter_keep_mask(x.shape, keep, draw_key(), x.device)
    elif x.device.type != "cpu":  # the rand trick only pays on the CPU; elsewhere torch's fused dropout
        return F.dropout(x, p, True)
    else:
        keep_mask = torch.rand_like(x) < keep
    return x * keep_mask.to(x.dtype).mul_(1.0 / keep)  # a float mask: one product forward and one backward


class Dropout(nn.Dropout):
    """Inverted dropout with a choice of mask generator; ``rng="torch"`` draws ``rand < 1 - p``.

    The same distribution as :class:`torch.nn.Dropout`, drawn about twice as fast on the CPU,
    where ``bernoulli_`` is much slower than ``rand``; ``rng="counter"`` is cheaper still.
    DiffuRec applies seven dropouts per Transformer block, a large share of a training step.
    """

    def __init__(self, p: float = 0.5, rng: DropoutRNG = "torch") -> None:
        super().__init__(p)
        _check_rng(rng)
        self.rng = rng

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.rng)

    def extra_repr(self) -> str:
        return f"p={self.p}, rng={self.rng}"
