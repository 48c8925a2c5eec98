"""Collectives: the ``comm`` a ``Trainer`` talks to, for one process or several.

``SingleProcessComm`` answers every collective with its argument, so the
single-process trainer (``loop.py``) reads as the plain algorithm.
``DistributedComm`` answers the same calls with ``torch.distributed``
collectives (the process group comes from ``launch.setup``). Both hold
collectives and the prompt layout only: no writer, no logging, no trainer or
engine construction.

The layout on ``w`` processes: each minibatch's ``M`` prompts are cut into
``w`` blocks of ``M / w`` consecutive prompts, and rank ``r`` takes block ``r``
of every minibatch, so rank ``r``'s ``k``-th local minibatch is its share of
global minibatch ``k`` (docs/distributed.md). Gathered rows come back in global
order.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from clipctl.errors import ClipctlError
from clipctl.rollout.base import pad_to


class SingleProcessComm:
    """One process: every collective returns its argument."""

    rank = 0
    world_size = 1
    is_main = True

    def for_minibatches(self, prompts: int) -> "SingleProcessComm":
        """This comm for minibatches of ``prompts`` prompts (the layout of gathered rows)."""
        return self

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


def _reorder(parts: list, chunk: int) -> list:
    """Per-rank lists (rank r holds chunks r, r + w, r + 2w, ... of the global list) -> global order."""
    w = len(parts)
    out = []
    for i in range(len(parts[0]) // chunk):
        for r in range(w):
            out.extend(parts[r][i * chunk : (i + 1) * chunk])
    return out


class DistributedComm(SingleProcessComm):
    """``torch.distributed`` collectives over ``world_size`` processes; this is rank ``rank``."""

    def __init__(self, rank: int, world_size: int, device: torch.device, block_prompts: int = 0):
        self.rank, self.world_size, self.device = rank, world_size, device
        self.is_main = rank == 0
        self.block_prompts = block_prompts  # M / w: prompts of one rank's block of a minibatch

    def for_minibatches(self, prompts: int) -> "DistributedComm":
        return DistributedComm(self.rank, self.world_size, self.device, prompts // self.world_size)

    def share(self, n: int) -> int:
        return n // self.world_size

    def positions(self, n: int, block: int) -> list[int]:
        per = block // self.world_size
        return [k + self.rank * per + i for k in range(0, n, block) for i in range(per)]

    def sum(self, x):
        t = torch.tensor(float(x), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return int(round(t.item())) if isinstance(x, int) else t.item()

    def sums(self, sums: dict) -> dict:
        keys = list(sums)
        t = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64) for k in keys]).to(self.device)
        dist.all_reduce(t)
        t = t.cpu()
        return {k: t[i] for i, k in enumerate(keys)}

    def _max(self, n: int) -> int:
        t = torch.tensor(n, dtype=torch.long, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def rows(self, t: torch.Tensor, group: int, *, left: bool = False) -> torch.Tensor:
        dtype = t.dtype
        x = t.detach().cpu()
        if dtype == torch.bool:  # gloo has no bool collectives
            x = x.to(torch.uint8)
        if x.dim() == 2:
            x = pad_to(x, self._max(x.shape[1]), 0, left)
        x = x.contiguous().to(self.device)
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x)
        stacked = torch.stack([p.cpu() for p in parts])  # [w, n_local, ...]
        chunk = group * self.block_prompts  # rows of one rank's block of a minibatch
        rest = tuple(x.shape[1:])
        out = stacked.view(self.world_size, x.shape[0] // chunk, chunk, *rest).transpose(0, 1).reshape(-1, *rest)
        return out.to(dtype)

    def objects(self, items: list, group: int) -> list:
        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, list(items))
        return _reorder(parts, group * self.block_prompts)

    def batch(self, batch, group: int):
        from clipctl.rollout import RolloutBatch

        logprobs = batch.logprobs
        return RolloutBatch(
            prompt_ids=self.rows(batch.prompt_ids, group, left=True),
            prompt_mask=self.rows(batch.prompt_mask, group, left=True),
            response_ids=self.rows(batch.response_ids, group),
            response_mask=self.rows(batch.response_mask, group),
            truncated=self.rows(batch.truncated, group),
            response_text=self.objects(batch.response_text, group),
            logprobs=None if logprobs is None else self.rows(logprobs, group),
        )

    def broadcast(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable, *args, **kwargs):
        result, error = None, None
        if self.is_main:
            try:
                result = fn(*args, **kwargs)
            except ClipctlError as e:
                error = e
            except Exception as e:  # the other ranks must not wait forever
                self.broadcast((None, RuntimeError(f"rank 0 failed: {type(e).__name__}: {e}")))
                raise
        result, error = self.broadcast((result, error))
        if error is not None:
            raise error
        return result

    def barrier(self) -> None:
        dist.barrier()
