import pytest

from nmt.optim import learning_rate
from nmt.recipe import TrainConfig


def test_warmup_then_inverse_square_root():
    config = TrainConfig(lr=1.0, schedule="rsqrt", warmup_steps=4)
    assert [learning_rate(config, s) for s in (1, 2, 4)] == [0.25, 0.5, 1.0]
    assert learning_rate(config, 16) == pytest.approx(0.5)


def test_exponential_and_floor():
    config = TrainConfig(lr=1.0, schedule="exponential", decay=0.5, decay_steps=10, min_lr=0.2)
    assert learning_rate(config, 10) == pytest.approx(0.5)
    assert learning_rate(config, 20) == pytest.approx(0.25)
    assert learning_rate(config, 30) == pytest.approx(0.2)


def test_plateau_counts_decays():
    config = TrainConfig(lr=0.8, schedule="plateau", decay=0.5)
    assert learning_rate(config, 100, plateau_decays=0) == 0.8
    assert learning_rate(config, 100, plateau_decays=2) == pytest.approx(0.2)


def test_constant():
    assert learning_rate(TrainConfig(lr=0.3), 1000) == 0.3


@pytest.mark.parametrize(
    "optimizer, expected",
    [
        ("sgd", lambda p, lr, wd: p - lr * wd * p),  # L2: the decay is part of the gradient
        ("adam", lambda p, lr, wd: p - lr * p.sign()),  # L2, normalized like any gradient
        ("adamw", lambda p, lr, wd: p * (1 - lr * wd)),  # decoupled: shrinks the weights alone
    ],
)
def test_weight_decay_is_l2_for_adam_and_sgd_and_decoupled_for_adamw(optimizer, expected):
    """One update of a parameter whose loss gradient is 0: all that moves it is the decay,
    which each optimizer applies in its own way, with the recipe's lr and momentum."""
    import torch

    from nmt.optim import build_optimizer

    parameter = torch.nn.Parameter(torch.tensor([2.0, -0.5, 0.25]))
    start = parameter.detach().clone()
    config = TrainConfig(optimizer=optimizer, lr=0.1, weight_decay=0.01, momentum=0.9)
    step = build_optimizer([parameter], config)
    parameter.grad = torch.zeros_like(parameter)
    step.step()
    assert torch.allclose(parameter.detach(), expected(start, 0.1, 0.01), atol=1e-6, rtol=0)
    group = step.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (0.1, 0.01)
    if optimizer == "sgd":
        assert group["momentum"] == 0.9
