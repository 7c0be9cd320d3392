"""``train.strategy``: how several processes share the training, on PyTorch's own engines.

* ``ddp`` (the default): :class:`~torch.nn.parallel.DistributedDataParallel` wraps the model. Its
  gradients are all-reduced in buckets while the backward pass still runs. The weighting's own
  parameters (e.g. ``uncertainty``'s log-variances) take no part in the model's forward pass, so
  DDP is told to ignore them and they are averaged here in one all-reduce after the backward.
* ``fsdp``: FSDP2 (:func:`torch.distributed.fsdp.fully_shard`) shards each encoder, the fusion,
  the architecture and then the rest of the model (heads) across the processes, with a
  :class:`~torch.distributed.fsdp.MixedPrecisionPolicy` that follows ``train.precision``
  (bfloat16 parameters, float32 gradient reduction). The weighting stays whole on every
  process (``ignored_params``) and is averaged as under DDP. Checkpoints are sharded
  (:mod:`torch.distributed.checkpoint`) and load on any number of processes.

With one process nothing is wrapped: the single-process step is the plain one.

Gradient-level weightings work under both: their batched per-task ``torch.autograd.grad`` call
accumulates nothing into ``.grad``, so no reducer hook fires; the one final backward of
:func:`~mtmm_core.weighting.weighted_backward` is the synchronised one. Each process combines the
task gradients of its own share of the batch (docs/distributed.md says what that changes).

``train.grad_accumulation: N`` splits each process's share of a step's batch into N
micro-batches (:func:`split_batch`); the gradients are synchronised only on the last
(``no_sync`` under DDP, ``set_requires_gradient_sync(False)`` under FSDP).
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from typing import Any, ContextManager, Iterator

import torch
import torch.distributed as dist
from torch import nn

from mtmm_core.contracts import Batch
from mtmm_core.distributed import Context
from mtmm_core.errors import SpecError
from mtmm_core.model import batch_size_of
from mtmm_core.precision import Precision

STRATEGIES = ("ddp", "fsdp")


def _slice(value: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a batch entry: a tensor (a view), a list, or a dict of those."""
    if isinstance(value, dict):
        return {key: _slice(item, start, stop) for key, item in value.items()}
    if isinstance(value, (torch.Tensor, list, tuple)):
        return value[start:stop]
    return value


def split_batch(batch: Batch, parts: int) -> list[tuple[Batch, float]]:
    """``batch`` cut into ``parts`` consecutive micro-batches, each with its share of the rows (sizes differ
    by at most one; none is empty); ``parts == 1`` gives the batch itself with share 1.0."""
    if parts == 1:
        return [(batch, 1.0)]
    rows = batch_size_of(next(iter(batch.inputs.values())))
    parts = min(parts, rows)
    bounds = [rows * index // parts for index in range(parts + 1)]
    return [(Batch(*(_slice(field, start, stop) if field is not None else None for field in batch)),
             (stop - start) / rows) for start, stop in zip(bounds, bounds[1:])]


def _sharded_tensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return None
    return DTensor


class Strategy:
    """The model as the processes train it: ``network`` is what the forward pass calls.

    ``kind`` is ``train.strategy``; with one process (``context`` inactive) nothing is wrapped.
    ``sharded_checkpoints`` is True under ``fsdp`` whatever the process count, so that one run's
    checkpoints always have one format (and load on any number of processes).
    """

    def __init__(self, kind: str, model: nn.Module, context: Context, device: torch.device,
                 precision: Precision):
        self.kind = kind
        self.model = model
        self.context = context
        self.device = device
        self.precision = precision
        self.sharded_checkpoints = kind == "fsdp"
        self.weighting_parameters = list(model.weighting.parameters())
        self.network: nn.Module = model
        if context.active and kind == "ddp":
            self._wrap_ddp()
        elif context.active and kind == "fsdp":
            if hasattr(model.architecture, "regularization"):
                raise SpecError("train.strategy", f"'fsdp' cannot shard the architecture "
                                f"{type(model.architecture).__name__}: its regularization() reads its parameters "
                                "outside the forward pass, where FSDP keeps them sharded. Use 'ddp'")
            self._shard()

    # -- wrapping ----------------------------------------------------------------------------------
    def _wrap_ddp(self) -> None:
        from torch.nn.parallel import DistributedDataParallel

        ignored = [f"weighting.{name}" for name, _ in self.model.weighting.named_parameters()]
        ignored += [f"weighting.{name}" for name, _ in self.model.weighting.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, ignored)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # No buffer broadcast per forward: the model's buffers are constants, equal since broadcast_parameters.
        parameters = inspect.signature(DistributedDataParallel).parameters
        no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in parameters
                          else {"broadcast_buffers": False})
        self.network = DistributedDataParallel(self.model, device_ids=device_ids, **no_buffer_sync)
        # A conv weight with one input channel ([C, 1, k, k]) gets its gradient in another (equally dense) stride
        # order than DDP's bucket view; DDP copies those few numbers and warns once per process that it did.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

    def rewrap(self) -> None:
        """Build the DDP wrapper again after parameters changed ``requires_grad`` (``transfer.unfreeze_at_epoch``):
        DDP fixes the parameters it reduces when it is built. FSDP2 follows its sharded parameters' flags (the
        trainer unfreezes those, not the parameters the model had before ``fully_shard`` replaced them)."""
        if self.context.active and self.kind == "ddp":
            self._wrap_ddp()

    def _shard(self) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(self.device.type, (self.context.world_size,))
        param_dtype = self.precision.dtype if self.precision.dtype == torch.bfloat16 else None
        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        blocks = [*self.model.encoders.values(), self.model.fusion, self.model.architecture]
        for block in blocks:
            if any(True for _ in block.parameters()):
                fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(self.model, mesh=mesh, mp_policy=policy, ignored_params=set(self.weighting_parameters))
        # FSDP2 warns (at the first forward) of every sharded module that returns a view; mtmm changes no
        # module's output in place, which is what the warning is about.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")

    # -- one step ------------------------------------------------------------------------------------
    def sync_gradients(self, sync: bool) -> ContextManager[Any]:
        """The context of one micro-batch's forward and backward: gradients are reduced across the
        processes only when ``sync`` (the last micro-batch of a step)."""
        if sync or not self.context.active:
            return _synchronised(self.network)
        if self.kind == "ddp":
            return self.network.no_sync()
        return _fsdp_no_sync(self.model)

    def after_backward(self) -> None:
        """Average the weighting's own gradients over the processes (one all-reduce; DDP and FSDP leave them
        out); a missing gradient counts as 0."""
        if not self.context.active:
            return
        parameters = [p for p in self.weighting_parameters if p.requires_grad]
        if not parameters:
            return
        for parameter in parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        flat = torch.cat([p.grad.reshape(-1) for p in parameters])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.context.world_size
        for parameter, piece in zip(parameters, flat.split([p.numel() for p in parameters])):
            parameter.grad.copy_(piece.view_as(parameter))

    def clip_gradients(self, max_norm: float) -> None:
        """Scale the gradients so that their global 2-norm is at most ``max_norm`` (no host sync).

        Under FSDP the norm of the sharded gradients is reduced across the processes and joined with the
        weighting's (whole) gradients."""
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        sharded_type = _sharded_tensor_type()
        sharded = [p for p in parameters if sharded_type is not None and isinstance(p, sharded_type)]
        if not sharded:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
            return
        from torch.distributed.tensor.experimental import implicit_replication

        whole = [p for p in parameters if not isinstance(p, sharded_type)]
        norm = torch.nn.utils.get_total_norm([p.grad for p in sharded])
        norm = norm.full_tensor() if isinstance(norm, sharded_type) else norm
        if whole:
            norm = torch.linalg.vector_norm(torch.stack([norm, torch.nn.utils.get_total_norm([p.grad for p in whole])]))
        with implicit_replication():
            torch.nn.utils.clip_grads_with_norm_(sharded, max_norm, norm)
        if whole:
            torch.nn.utils.clip_grads_with_norm_(whole, max_norm, norm)

    # -- weights -------------------------------------------------------------------------------------
    def full_model_state(self) -> dict[str, Any]:
        """The whole model's weights (every process calls this; under FSDP only rank 0's copy is filled, on the CPU)."""
        if not (self.context.active and self.kind == "fsdp"):
            return self.model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_full_model_state(self, state: dict[str, Any]) -> None:
        """Load whole weights (e.g. ``best.pt``, read by every process) into the model, sharding them under FSDP."""
        if not (self.context.active and self.kind == "fsdp"):
            self.model.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))


@contextlib.contextmanager
def _synchronised(network: nn.Module) -> Iterator[None]:
    yield


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    """FSDP2 accumulates unsharded gradients locally (no reduce-scatter) until the sync is turned back on."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
