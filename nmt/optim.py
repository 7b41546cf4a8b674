"""Optimisers and learning-rate schedules.

The learning rate is a pure function of the update count and the number of plateau decays, both
kept in the training progress, so a resumed run follows exactly the schedule of an unbroken one.
"""

from __future__ import annotations

import math

import torch

from nmt.recipe import TrainConfig


def build_optimizer(parameters, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)


def learning_rate(config: TrainConfig, step: int, plateau_decays: int = 0) -> float:
    """The learning rate for update number `step` (1-based)."""
    if config.warmup_steps and step <= config.warmup_steps:
        return config.lr * step / config.warmup_steps
    if config.schedule == "rsqrt":
        rate = config.lr * math.sqrt(max(config.warmup_steps, 1) / step)
    elif config.schedule == "exponential":
        rate = config.lr * config.decay ** ((step - config.warmup_steps) / config.decay_steps)
    elif config.schedule == "plateau":
        rate = config.lr * config.decay**plateau_decays
    else:
        rate = config.lr
    return max(rate, config.min_lr)


def set_learning_rate(optimizer: torch.optim.Optimizer, rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = rate
