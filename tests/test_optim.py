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
