"""Data-parallel training with ``torch.distributed``, launched by ``torchrun`` (or ``mtmm train --nproc N``).

Every rank holds a full model, reads its own share of each global batch, and after the
backward pass the gradients of all parameters are averaged across ranks with one
all-reduce per parameter. That keeps every rank's model identical without wrapping
it in ``DistributedDataParallel``: loss weightings own learnable parameters that live
outside the model's forward pass, and gradient-level weightings run their own
backward passes, neither of which DDP's reducer accepts. Outside ``torchrun`` every
function here is a no-op for a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """This process's place in the job: ``rank`` of ``world_size``, and its ``local_rank`` on the node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs and checkpoints."""
        return self.rank == 0


def setup(device_type: str) -> Context:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, NCCL on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context()
    context = Context(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return context


def teardown(context: Context) -> None:
    """Leave the process group."""
    if context.active and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_parameters(module: torch.nn.Module, context: Context) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if context.active:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(parameters: Iterable[torch.nn.Parameter], context: Context) -> None:
    """Replace each parameter's gradient by its mean over the ranks (a missing gradient counts as 0)."""
    if not context.active:
        return
    for parameter in parameters:
        if not parameter.requires_grad:
            continue
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
        parameter.grad /= context.world_size


def sum_across(tensor: torch.Tensor, context: Context) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over the ranks (a copy)."""
    total = tensor.clone()
    if context.active:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def gather(value: Any, context: Context) -> list[Any]:
    """Every rank's ``value``, in rank order (a list of one for a single process)."""
    if not context.active:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(context: Context) -> None:
    """Wait until every rank gets here."""
    if context.active:
        dist.barrier()
