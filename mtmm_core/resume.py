"""What ``last.pt`` holds to continue a run exactly from a step boundary, and how a :class:`~mtmm_core.trainer.Trainer`
takes it back: weights and optimiser (or, under FSDP, the name of a folder of shards that loads on any number of
processes), the LR schedule, precision (fp16's GradScaler), the epoch's position and loss sums, early-stopping
state and every rank's random-number state."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import torch

from mtmm_core import distributed
from mtmm_core.checkpoint import load_sharded, save_sharded

if TYPE_CHECKING:
    from mtmm_core.trainer import Trainer


def resume_state(trainer: "Trainer") -> dict[str, Any]:
    """Everything ``last.pt`` holds to continue from this step boundary (every rank calls it: it
    gathers each rank's RNG state; only rank 0's copy is written)."""
    rng_states = distributed.gather(torch.get_rng_state(), trainer.context)
    weights: dict[str, Any] = {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict()}
    if trainer.strategy.sharded_checkpoints:  # FSDP: every rank writes its shard; last.pt names the folder
        token = distributed.gather(time.time_ns(), trainer.context)[0]  # rank 0's: one name for every rank
        name = f"sharded-{trainer.epoch}-{trainer.step_in_epoch}-{token}"
        save_sharded(trainer.model, trainer.optimizer, trainer.out_dir / name, is_main=trainer.context.is_main)
        weights = {"sharded": name}
    return {
        **weights,
        "scheduler": trainer.scheduler.state_dict(),
        "precision": trainer.precision.state_dict(),  # fp16's GradScaler (empty otherwise)
        "epoch": trainer.epoch,
        "step_in_epoch": trainer.step_in_epoch,
        "epoch_loss_sums": trainer.epoch_loss_sums.cpu(),
        "epoch_present_counts": trainer.epoch_present_counts.cpu(),
        "epoch_regularization_sum": trainer.epoch_regularization_sum,
        "best": trainer.best,
        "best_epoch": trainer.best_epoch,
        "stale_epochs": trainer.stale_epochs,
        "torch_rng": rng_states,  # one per rank
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }



def restore(trainer: "Trainer", state: dict[str, Any]) -> None:
    """Continue from ``last.pt``'s ``state``; a sharded checkpoint (FSDP) loads on any number of processes."""
    if "sharded" in state:
        load_sharded(trainer.model, trainer.optimizer, trainer.out_dir / state["sharded"])
    else:
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.precision.load_state_dict(state.get("precision", {}))
    trainer.epoch, trainer.step_in_epoch = state["epoch"], state["step_in_epoch"]
    trainer.epoch_loss_sums = state["epoch_loss_sums"].to(trainer.device, trainer._sum_dtype)
    trainer.epoch_present_counts = state.get(  # checkpoints before absent tasks were counted: every step counted
        "epoch_present_counts", torch.full_like(trainer.epoch_loss_sums, float(trainer.step_in_epoch))
    ).to(trainer.device, trainer._sum_dtype)
    trainer.epoch_regularization_sum = state["epoch_regularization_sum"]
    trainer.best, trainer.stale_epochs = state["best"], state["stale_epochs"]
    trainer.best_epoch = state.get("best_epoch")
    rng_states = state["torch_rng"]
    if trainer.read_only:  # evaluating: no random draws to continue, any number of processes will do
        return
    if len(rng_states) != trainer.context.world_size and trainer.context.is_main:
        print(f"resuming a run of {len(rng_states)} process{'es' if len(rng_states) > 1 else ''} with "
              f"{trainer.context.world_size}: the weights, optimiser and data order continue, but each step's "
              "batch is split differently and the random draws (dropout, modality dropout) differ from an "
              "uninterrupted run", file=sys.stderr)
    if trainer.context.rank < len(rng_states):  # a rank the run did not have keeps its own seed
        torch.set_rng_state(rng_states[trainer.context.rank])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
