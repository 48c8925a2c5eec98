"""Collectives of the one-process trainer: the ``comm`` a ``Trainer`` talks to.

``SingleProcessComm`` answers every collective with its argument, so the
single-process trainer (``loop.py``) reads as the plain algorithm. It holds
collectives only: no writer, no logging, no trainer construction, so both
``loop.py`` and ``distributed.py`` import it without importing each other.
``distributed.SingleProcess`` adds the run-level policy (writer, logging,
resume checks, trainer construction) on top, and ``distributed.DeepSpeedRanks``
answers the same calls with ``torch.distributed`` collectives.
"""

from __future__ import annotations

from typing import Callable

import torch


class SingleProcessComm:
    """One process: every collective returns its argument."""

    rank = 0
    world_size = 1
    is_main = True

    def share(self, n: int) -> int:
        """This process's part of ``n`` prompts (``n`` divisible by the world size)."""
        return n

    def positions(self, n: int, block: int) -> list[int]:
        """Global positions of this process's prompts among ``n``, cut in minibatches of ``block``."""
        return list(range(n))

    def sum(self, x):
        """Sum of a number over processes (same type back)."""
        return x

    def sums(self, sums: dict) -> dict:
        """Element-wise sum over processes of a dict of scalar tensors."""
        return sums

    def rows(self, t: torch.Tensor, group: int, *, left: bool = False) -> torch.Tensor:
        """Rows of every process, in global order (``group`` rows per prompt); dim 1 padded."""
        return t

    def objects(self, items: list, group: int) -> list:
        """Like ``rows`` for a list of picklable items."""
        return items

    def batch(self, batch, group: int):
        """The step's whole ``RolloutBatch`` (for metrics and logs; never for a forward pass)."""
        return batch

    def on_main(self, fn: Callable, *args, **kwargs):
        """Run ``fn`` on rank 0 only; every rank returns its result (or raises its ClipctlError)."""
        return fn(*args, **kwargs)

    def barrier(self) -> None:
        pass
