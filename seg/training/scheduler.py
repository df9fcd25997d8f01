"""Poly learning-rate decay by iteration, as in mmsegmentation's ``PolyLR`` (DeepLab, https://arxiv.org/abs/1606.00915):

    lr(t) = (base_lr - min_lr) * (1 - t / max_iters) ** power + min_lr

It is stepped once per optimizer step (Lightning ``interval='step'``), and its state (``last_epoch`` = the
iteration) is saved in checkpoints, so a resumed run continues on the same curve.
"""
from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class PolyLR(LRScheduler):
    """Args:
        optimizer: the wrapped optimizer.
        max_iters: iteration at which ``min_lr`` is reached (the run's ``max_steps``).
        power: decay exponent (0.9).
        min_lr: floor (1e-4 in the mmseg recipes).
    """

    def __init__(self, optimizer: Optimizer, max_iters: int, power: float = 0.9, min_lr: float = 1e-4,
                 last_epoch: int = -1) -> None:
        if max_iters <= 0:
            raise ValueError(f"PolyLR needs max_iters > 0, got {max_iters}; set trainer.max_steps")
        self.max_iters = max_iters
        self.power = power
        self.min_lr = min_lr
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        t = min(self.last_epoch, self.max_iters)
        coeff = (1 - t / self.max_iters) ** self.power
        return [(base - self.min_lr) * coeff + self.min_lr for base in self.base_lrs]
