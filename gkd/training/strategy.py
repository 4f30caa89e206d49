"""How one process takes part in a run: the `Trainer` asks its strategy, never the process group itself.

`Parallelism` (the default, `SINGLE_PROCESS`) is the whole run in this process. `DataParallel` is one rank of a
data-parallel run (`devices: N`, `gkd.training.parallel` starts the ranks): it computes its share of each step,
sums gradients and logged loss terms over the ranks, and lets only rank 0 evaluate, export, save state and run
callbacks.

Why not `DistributedDataParallel`: the gradient terms of `gradient_kd` / `gradient_kd_cls` are built by double
backprop (`torch.autograd.grad(..., create_graph=True)` inside the loss, then `loss.backward()`). DDP's reducer
hooks do not support that: `backward(create_graph=True)` on a DDP output raises, and `autograd.grad` inside a
DDP forward gives wrong (unreduced or doubly reduced) gradients (pytorch/pytorch#47562, #63812). So each rank
runs the ordinary loss on its share of the step, calls `loss.backward()`, and the gradients are then summed
with one `all_reduce` per parameter. The shares are weighted by their number of examples in the whole step,
so the sum *is* the one-process gradient.

How a step (`batch_size` x `gradient_accumulation_steps` examples) is shared:
- with at least as many micro-batches in the step as ranks, whole micro-batches go round-robin to the ranks:
  every loss term is computed on exactly the same tensors as on one device, so the result equals one-process
  training with the same hyperparameters to float rounding;
- with fewer micro-batches than ranks, each micro-batch is split by examples. Every term that averages over
  examples (CE, KL, PKD, saliency form, [CLS] gradients) stays exact; the vector-form input-gradient term
  averages over *tokens*, and is then averaged per shard instead of over the whole micro-batch (the same
  approximation DDP makes for any token-averaged loss).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class Parallelism:
    """The whole run in this one process: every hook is the identity."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process evaluates, exports, saves the training state and runs the callbacks."""
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """The device this process trains on, given the run's."""
        return requested

    def share(self, group: list[list[int]]) -> list[list[int]]:
        """This process's micro-batches of one optimisation step."""
        return group

    def synchronise(self, model: torch.nn.Module, sums: dict[str, float]) -> dict[str, float]:
        """Combine gradients and the logged loss terms across processes before the optimiser step."""
        return sums

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        """Give every process rank 0's initial weights."""

    def barrier(self) -> None:
        """Wait until every process gets here."""

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on any (a stop asked for on rank 0 stops all)."""
        return flag


SINGLE_PROCESS = Parallelism()


class DataParallel(Parallelism):
    """One rank of a data-parallel run; the process group must be initialised (see the module docstring)."""

    def __init__(self) -> None:
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.backend = dist.get_backend()
        self._flag_device = torch.device("cpu")

    def device(self, requested: torch.device) -> torch.device:
        if self.backend != "nccl":
            return requested
        device = torch.device("cuda", self.rank)
        torch.cuda.set_device(device)
        self._flag_device = device
        return device

    def share(self, group: list[list[int]]) -> list[list[int]]:
        if len(group) >= self.world_size:
            return group[self.rank :: self.world_size]
        return [part for part in (indices[self.rank :: self.world_size] for indices in group) if part]

    def synchronise(self, model: torch.nn.Module, sums: dict[str, float]) -> dict[str, float]:
        """Sum gradients and the logged loss terms over the ranks (each share is weighted by the step's size)."""
        for parameter in model.parameters():
            if not parameter.requires_grad:
                continue
            if parameter.grad is None:  # a rank without data adds zeros
                parameter.grad = torch.zeros_like(parameter)
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
        gathered: list[dict[str, float]] = [{} for _ in range(self.world_size)]
        dist.all_gather_object(gathered, sums)
        total: dict[str, float] = {}
        for part in gathered:
            for name, value in part.items():
                total[name] = total.get(name, 0.0) + value
        return total

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def barrier(self) -> None:
        dist.barrier()

    def any(self, flag: bool) -> bool:
        value = torch.tensor([1.0 if flag else 0.0], device=self._flag_device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)
