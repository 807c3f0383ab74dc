import pytest
import torch

from diffrec.layers import Dropout


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_dropout_matches_torch_in_distribution(p):
    torch.manual_seed(0)
    layer = Dropout(p)
    x = torch.ones(400_000)
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert abs(y.mean().item() - 1.0) < 0.01  # inverted dropout keeps the expectation


def test_dropout_gradient_and_modes():
    layer = Dropout(0.3)
    x = torch.randn(64, 32, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert torch.equal(x.grad != 0, y != 0)  # the gradient flows through the kept units only
    layer.eval()
    assert layer(x) is x
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))
    assert Dropout(0.0)(x) is x
