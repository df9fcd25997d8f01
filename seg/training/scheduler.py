"""Poly learning-rate decay by iteration, as mmengine's ``PolyLR(by_epoch=False, begin=0, end=max_iters)`` that the
mmseg recipes use (DeepLab, https://arxiv.org/abs/1606.00915). Iteration t = 0 .. max_iters - 1 trains with

    lr(t) = (base_lr - min_lr) * (1 - t / (max_iters - 1)) ** power + min_lr

so the last iteration (t = max_iters - 1) trains with ``min_lr``, and the lr stays there afterwards. This is the
closed form of mmengine's chainable update ``lr_t = (lr_{t-1} - eta_min) * (1 - 1 / (T - t + 1)) ** power +
eta_min`` with ``T = end - begin - 1`` (equal to fp64 rounding; tests/test_recipe_golden.py checks it against
mmengine's own sequence). The closed form keeps a resumed run on the same curve from ``last_epoch`` alone.

It is stepped once per optimizer step (Lightning ``interval='step'``), and its state (``last_epoch`` = the
iteration) is saved in checkpoints.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class PolyLR(LRScheduler):
    """Args:
    optimizer: the wrapped optimizer.
    max_iters: number of iterations of the run (its ``max_steps``); iteration ``max_iters - 1``, the last,
        trains with ``min_lr``.
    power: decay exponent (0.9).
    min_lr: floor (1e-4 in the mmseg recipes).
    """

    def __init__(
        self, optimizer: Optimizer, max_iters: int, power: float = 0.9, min_lr: float = 1e-4, last_epoch: int = -1
    ) -> None:
        if max_iters <= 0:
            raise ValueError(f"PolyLR needs max_iters > 0, got {max_iters}; set trainer.max_steps")
        self.max_iters = max_iters
        self.power = power
        self.min_lr = min_lr
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        last = self.max_iters - 1  # mmengine's total_iters = end - begin - 1
        if last == 0:  # a 1-iteration schedule never updates in mmengine (its only step is past ``end``)
            return list(self.base_lrs)
        t = min(self.last_epoch, last)
        coeff = (1 - t / last) ** self.power
        return [(base - self.min_lr) * coeff + self.min_lr for base in self.base_lrs]
