"""Data parallelism for the training loop: the process group, the wrapped module, gradient sync.

One process trains alone. Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set) every process
holds a replica (DDP) or a shard (FSDP2's ``fully_shard`` per decoder layer, the embedding,
final norm and head in the root unit) and the gradients are averaged over the processes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ctlab.errors import UserError


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the processes (a copy on this process's device; ``value``
        itself on one process)."""
        if self.world_size > 1:
            value = value.to(self.device, copy=True)
            dist.all_reduce(value)
        return value

    def from_main(self, value: object) -> object:
        """Rank 0's ``value``, on every rank."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


@contextlib.contextmanager
def distributed(device: str = "auto") -> Iterator[Distributed]:
    """This process's place from torchrun's environment (one process without it). ``device``:
    "cuda" (this process's GPU, NCCL between processes), "cpu" (gloo) or "auto" (the GPU when
    there is one). A process group started here is ended on leaving, once every process is done."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise UserError("device cuda was asked for, but torch sees no GPU on this machine")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise UserError(
            f"process {local_rank} of this machine has no GPU of its own ({torch.cuda.device_count()} found): "
            "start at most that many processes per machine, or train with --device cpu"
        )
    placed = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(placed)
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        yield Distributed(rank, world_size, placed)
        if owns_group:
            dist.barrier()  # no process ends the group while another still uses it
    finally:
        if owns_group:
            dist.destroy_process_group()


def parallelise(model: torch.nn.Module, mode: str, env: Distributed, unused_parameters: bool) -> torch.nn.Module:
    """The module the training steps call: ``model`` itself on one process, else DDP around it,
    or ``model`` sharded in place by FSDP (mode "fsdp"; each of ``model.layers`` a unit and
    ``exit_logits`` gathering like ``forward``). Every rank starts from rank 0's weights.
    ``unused_parameters``: a step may leave some parameters without a gradient on a rank."""
    if env.world_size == 1:
        return model
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        for layer in model.layers:
            fully_shard(layer)
        fully_shard(model)
        if hasattr(model, "exit_logits"):
            register_fsdp_forward_method(model, "exit_logits")
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, find_unused_parameters=unused_parameters)


def parallel_mode(trained: torch.nn.Module) -> str:
    """How the steps are parallelised: "fsdp", "ddp" or "none"."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(trained, FSDPModule):
        return "fsdp"
    return "ddp" if isinstance(trained, DistributedDataParallel) else "none"


def gradient_sync(trained: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Whether this micro-batch's backward reduces gradients across ranks (only the last of a step
    needs to: the earlier ones accumulate locally)."""
    if hasattr(trained, "set_requires_gradient_sync"):  # FSDP
        trained.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if not sync and hasattr(trained, "no_sync"):  # DDP
        return trained.no_sync()
    return contextlib.nullcontext()
