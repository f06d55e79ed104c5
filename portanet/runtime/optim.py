"""Optimizers (SGD with momentum, Adam, AdamW) and learning-rate schedules, as registries.

Schedules step once per epoch: ``step`` multiplies the rate by ``gamma`` every ``step_size``
epochs, ``exponential`` by ``gamma`` every epoch, ``cosine`` anneals it to ``min_lr`` over the
run's epochs, ``constant`` leaves it alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from portanet.errors import InvalidInputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

OptimizerFactory = Callable[..., "torch.optim.Optimizer"]
ScheduleFactory = Callable[..., "torch.optim.lr_scheduler.LRScheduler | None"]

_OPTIMIZERS: dict[str, tuple[OptimizerFactory, float]] = {}
_SCHEDULES: dict[str, ScheduleFactory] = {}


def register_optimizer(name: str, default_lr: float):
    """Decorator: ``factory(params, lr, momentum, weight_decay) -> torch.optim.Optimizer``."""

    def deco(fn: OptimizerFactory) -> OptimizerFactory:
        _OPTIMIZERS[name] = (fn, default_lr)
        return fn

    return deco


def register_schedule(name: str):
    """Decorator: ``factory(optimizer, epochs, step_size, gamma, min_lr) -> scheduler or None``."""

    def deco(fn: ScheduleFactory) -> ScheduleFactory:
        _SCHEDULES[name] = fn
        return fn

    return deco


def optimizers() -> list[str]:
    return list(_OPTIMIZERS)


def schedules() -> list[str]:
    return list(_SCHEDULES)


def default_lr(name: str) -> float:
    _check(name, _OPTIMIZERS, "optimizer")
    return _OPTIMIZERS[name][1]


def _check(name: str, table: dict[str, Any], what: str) -> None:
    if name not in table:
        raise InvalidInputError(f"unknown {what} '{name}'; known: {', '.join(table)}")


def make_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], *, lr: float | None = None, momentum: float = 0.9,
    weight_decay: float | None = None,
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``params``; ``lr=None`` uses the optimizer's usual default."""
    _check(name, _OPTIMIZERS, "optimizer")
    fn, lr0 = _OPTIMIZERS[name]
    rate = lr0 if lr is None else lr
    if rate <= 0:
        raise InvalidInputError(f"learning rate must be positive, received {rate}")
    return fn(list(params), lr=rate, momentum=momentum, weight_decay=weight_decay)


def make_schedule(
    name: str, optimizer: torch.optim.Optimizer, *, epochs: int, step_size: int | None = None,
    gamma: float | None = None, min_lr: float = 0.0,
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Build learning-rate schedule ``name`` (stepped once per epoch)."""
    _check(name, _SCHEDULES, "schedule")
    return _SCHEDULES[name](optimizer, epochs=epochs, step_size=step_size, gamma=gamma, min_lr=min_lr)


# ---------------------------------------------------------------------------- optimizers
@register_optimizer("sgd", 0.01)
def _sgd(params, *, lr, momentum, weight_decay):
    import torch

    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay or 0.0)


@register_optimizer("adam", 1e-3)
def _adam(params, *, lr, momentum, weight_decay):
    import torch

    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay or 0.0)


@register_optimizer("adamw", 1e-3)
def _adamw(params, *, lr, momentum, weight_decay):
    import torch

    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01 if weight_decay is None else weight_decay)


# ----------------------------------------------------------------------------- schedules
@register_schedule("constant")
def _constant(optimizer, *, epochs, step_size, gamma, min_lr):
    return None


@register_schedule("step")
def _step(optimizer, *, epochs, step_size, gamma, min_lr):
    import torch

    size = step_size if step_size is not None else max(1, epochs // 3)
    if size <= 0:
        raise InvalidInputError(f"step schedule: step size must be a positive number of epochs, received {size}")
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=size, gamma=0.1 if gamma is None else gamma)


@register_schedule("exponential")
def _exponential(optimizer, *, epochs, step_size, gamma, min_lr):
    import torch

    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9 if gamma is None else gamma)


@register_schedule("cosine")
def _cosine(optimizer, *, epochs, step_size, gamma, min_lr):
    import torch

    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs), eta_min=min_lr)
