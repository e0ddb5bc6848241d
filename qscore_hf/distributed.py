"""Sum- and max-reductions across processes with plain ``torch.distributed``.

``accelerate`` initialises torch's default process group, so these work the same under ``accelerate launch``,
``torchrun`` or a hand-made group; in a single process they are no-ops. (``accelerate.utils.reduce`` would
require an ``Accelerator`` to exist, which library code such as ``ActivationStats`` cannot assume.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Number of processes in the default group, 1 when torch.distributed is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce(tensor: Tensor, op: "dist.ReduceOp") -> Tensor:
    tensor = tensor.detach()
    if world_size() == 1:
        return tensor
    device = tensor.device
    if dist.get_backend() == "nccl" and device.type != "cuda":
        work = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    else:
        work = tensor.clone()
    dist.all_reduce(work, op=op)
    return work.to(device)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Return the element-wise sum of ``tensor`` over all processes (a new tensor; no gradient)."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def all_reduce_max(tensor: Tensor) -> Tensor:
    """Return the element-wise maximum of ``tensor`` over all processes (a new tensor; no gradient)."""
    return _all_reduce(tensor, dist.ReduceOp.MAX)


def end_process_group() -> None:
    """Destroy the default process group, if a launched command made one (a no-op otherwise). Left to the
    interpreter's exit, gloo's threads are torn down while joinable ("terminate called without an active exception"):
    a multi-process ``score`` that wrote everything then exited with SIGABRT about once in three runs."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
