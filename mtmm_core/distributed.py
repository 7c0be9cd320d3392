"""The process group of data-parallel training, launched by ``torchrun`` (or ``mtmm train --nproc N``).

Every rank reads its own share of each global batch; :mod:`mtmm_core.strategy` wraps the model in
``DistributedDataParallel`` or shards it with FSDP2 (``train.strategy``), which reduce the gradients.
This module joins the group, broadcasts rank 0's initial weights, and holds the few collectives the
trainer itself needs (loss means, the stop vote, agreement on errors, RNG states). Outside
``torchrun`` every function here is a no-op for a single process.

Faults end every process instead of hanging: a collective that does not complete within
``train.collective_timeout`` seconds raises on the ranks still running, which then name
the rank that stopped answering (:func:`stalled_ranks_message`, through a gloo
``monitored_barrier``); and on Linux each worker gets SIGTERM when its launcher dies, so
killing ``mtmm train --nproc N`` or ``torchrun`` never leaves orphans training on.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

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


_monitor_group: Any = None  # a gloo group used only to find a stalled rank after a timeout
_timeout_seconds = 0.0


def setup(device_type: str, timeout_seconds: float = 300.0) -> Context:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, NCCL on CUDA).

    A collective waits at most ``timeout_seconds``; a worker whose launcher dies gets SIGTERM.
    """
    global _monitor_group, _timeout_seconds
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context()
    context = Context(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    end_with_launcher()
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_seconds)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", timeout=timeout)
        _monitor_group = dist.new_group(backend="gloo", timeout=timeout)
        _timeout_seconds = timeout_seconds
    return context


def end_with_launcher() -> None:
    """Ask Linux to send this process SIGTERM when its parent (the launcher) dies; a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if parent == 1 or os.getppid() != parent:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def is_collective_failure(error: BaseException) -> bool:
    """True for the error a collective raises when another rank timed out, died or closed its connection."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        fragment in text for fragment in ("timed out", "timeout", "connection reset", "connection closed",
                                          "pair closure", "broken pipe", "gloo", "nccl"))


def stalled_ranks_message(context: Context) -> str:
    """After a failed collective: which ranks stopped answering, found with a gloo ``monitored_barrier``."""
    window = datetime.timedelta(seconds=max(5.0, min(60.0, _timeout_seconds / 4)))
    try:
        dist.monitored_barrier(group=_monitor_group, timeout=window, wait_all_ranks=True)
    except RuntimeError as error:
        text = str(error)
        if "failed to pass monitoredBarrier" in text:  # rank 0 lists the ranks that did not arrive
            ranks = text.split("Ranks", 1)[1].split("failed", 1)[0].strip()
            return f"rank {ranks} stopped answering (stalled or dead)"
        if "from rank 0" in text:
            return "rank 0 stopped answering (stalled or dead)"
        return f"the other ranks could not be reached ({text.splitlines()[0][:200]})"
    return "every rank answers again; a collective was slower than train.collective_timeout allows"


def teardown(context: Context) -> None:
    """Leave the process group."""
    if context.active and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_parameters(module: torch.nn.Module, context: Context) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if context.active:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


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


def agree(failed: bool, context: Context) -> bool:
    """True on every rank when ``failed`` is True on any rank (a no-op for a single process)."""
    if not context.active:
        return failed
    flag = torch.tensor([float(failed)])
    dist.all_reduce(flag, op=dist.ReduceOp.SUM, group=_monitor_group)
    return bool(flag.item() > 0)


def barrier(context: Context) -> None:
    """Wait until every rank gets here."""
    if context.active:
        dist.barrier()
