"""Process groups for torchrun: which process this is, and the few collectives training needs.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK (and MASTER_ADDR, MASTER_PORT). With WORLD_SIZE > 1
the training entry points join a process group (NCCL on CUDA, gloo on the CPU), each rank trains
on cuda:LOCAL_RANK (or the CPU), rank 0 alone reads and writes the run directory, and the other
ranks get what it read, or wait for what it writes, through `Dist.on_main`.
"""
from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place: rank of world (0 of 1 without torchrun), local_rank on its node, and
    the device it trains on."""

    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            tdist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def on_main(self, fn: Callable[[], T]) -> T:
        """fn() run on rank 0 alone; every rank gets its result, or raises its exception. The other
        ranks wait meanwhile, so this is also a barrier after rank 0's reads and writes."""
        if not self.active:
            return fn()
        box: list[tuple[bool, object] | None] = [None]
        if self.main:
            try:
                box[0] = (True, fn())
            except Exception as e:  # noqa: BLE001 - handed to every rank, raised below
                box[0] = (False, e)
        tdist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        ok, value = box[0]  # type: ignore[misc]
        if not ok:
            raise value  # type: ignore[misc]
        return value  # type: ignore[return-value]

    @contextmanager
    def node_first(self) -> Iterator[None]:
        """Run the block on local rank 0 of each node first, then on the node's other ranks: one
        process per node decodes a data set into the (atomically written) cache, the others read it."""
        if self.local_rank != 0:
            self.barrier()
        try:
            yield
        finally:
            if self.local_rank == 0:
                self.barrier()

    def mean(self, t: Tensor) -> Tensor:
        """The mean of `t` over the ranks (t itself in a single process)."""
        if not self.active:
            return t
        t = t.clone()
        tdist.all_reduce(t)
        return t / self.world


def leave() -> None:
    """Leave the process group, if this process joined one: a barrier (no rank tears down while a
    peer is still in a collective), then destroy_process_group, which joins Gloo's worker threads.

    The order matters at exit. A process that reaches interpreter finalization with the group
    alive has Gloo threads whose pending work holds tensors; destroying those during finalization
    aborts with "terminate called without an active exception", the message one CI run showed on
    rank 0 after training had finished (that run was not reproduced; PyTorch's issue tracker
    describes this mechanism). So `pegasus.cli.main` calls this in a `finally` before returning,
    while the interpreter is whole, and an atexit handler calls it for library callers; it is a
    no-op the second time."""
    if tdist.is_initialized():
        try:
            tdist.barrier()
        except RuntimeError:  # a peer already gone: tear down anyway
            pass
        tdist.destroy_process_group()


@contextmanager
def distributed(device: str | torch.device) -> Iterator[Dist]:
    """This process's Dist, from the environment torchrun sets. With WORLD_SIZE > 1 the process
    joins a process group the first time (NCCL for CUDA, gloo for the CPU) and stays in it until it
    exits; a CUDA `device` without an index becomes cuda:LOCAL_RANK."""
    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Dist(device)
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not tdist.is_initialized():
        # Joined once per process: leaving and joining again (training the VQ-VAE, then the prior)
        # hung in about 1 of 3 tries with 2 gloo ranks on torch 2.13.
        tdist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        atexit.register(leave)
    if (tdist.get_world_size(), tdist.get_backend()) != (world, backend):
        raise RuntimeError(
            f"WORLD_SIZE={world} on {device.type} needs a {backend} group of {world} ranks; the one joined "
            f"earlier is {tdist.get_backend()} with {tdist.get_world_size()}"
        )
    yield Dist(device, rank, world, local_rank)
