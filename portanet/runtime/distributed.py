"""Data-parallel training with ``torch.distributed``: process-group set-up and the local launcher.

Every worker process runs the same training; ``DistributedDataParallel`` averages gradients
across workers after each backward pass, and a ``DistributedSampler`` gives each worker its
own share of every epoch's permutation. Rank 0 writes the outputs.

Workers learn their place from the environment variables torch's elastic launcher (``torchrun``)
sets: ``RANK`` (global rank), ``WORLD_SIZE`` (number of workers), ``LOCAL_RANK`` (rank on this
machine, which picks the GPU), ``MASTER_ADDR``/``MASTER_PORT`` (the rendezvous store).
``launch(fn, args, nproc)`` starts ``nproc`` workers on this machine through the same elastic
API; on several machines, run ``torchrun`` on each (see the README).
Backends: ``gloo`` on CPU, ``nccl`` on CUDA.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from portanet._deps import require
from portanet.errors import InvalidInputError, RuntimeBackendError

log = logging.getLogger(__name__)

#: environment variables that place a worker (set by torchrun / the elastic agent)
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistContext:
    """Where this process stands in a (possibly single-process) data-parallel run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: the torch device this worker computes on ("cpu", "cuda:1")
    device: str = "cpu"
    #: "gloo", "nccl" or "" when not distributed
    backend: str = ""
    #: did this context create the process group (and so must destroy it)?
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and the trained model."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum ``values`` over all workers (float64 on the worker's device)."""
        if not self.distributed:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def in_launched_worker() -> bool:
    """True inside a worker started by torchrun / the elastic launcher with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def resolve_device(device: str, local_rank: int = 0) -> str:
    """"cpu" | "cuda" | "cuda:K" -> a concrete device; "cuda" picks the local rank's GPU."""
    torch = require("torch")
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeBackendError("device 'cuda' requested but torch sees no CUDA device on this machine")
        if device == "cuda":
            return f"cuda:{local_rank % max(1, torch.cuda.device_count())}"
        return device
    raise InvalidInputError(f"unknown device '{device}'; use cpu or cuda")


def check_devices(device: str, nproc: int) -> None:
    """Before launching ``nproc`` local workers on ``device``: one GPU per worker must exist."""
    resolve_device(device)
    if device.startswith("cuda"):
        torch = require("torch")
        have = torch.cuda.device_count()
        if nproc > have:
            raise InvalidInputError(f"--nproc {nproc} with --device cuda needs {nproc} GPUs, this machine has {have}")


def setup(device: str = "cpu") -> DistContext:
    """Join the process group described by the environment, or return a single-process context.

    Uses the existing process group when the caller already initialised one.
    """
    torch = require("torch")
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        dev = resolve_device(device, local)
        return DistContext(rank, world, local, dev, dist.get_backend(), owns_group=False)
    if not in_launched_worker():
        return DistContext(device=resolve_device(device, 0))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    backend = "nccl" if dev.startswith("cuda") else "gloo"
    if dev.startswith("cuda"):
        torch.cuda.set_device(torch.device(dev))
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise InvalidInputError(
            f"distributed run (WORLD_SIZE={world}) without {', '.join(missing)}; start workers with torchrun"
        )
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                            device_id=torch.device(dev) if backend == "nccl" else None)
    log.info("joined process group: rank %d of %d (%s, %s)", rank, world, backend, dev)
    return DistContext(rank, world, local, dev, backend, owns_group=True)


def launch(fn: Callable[..., Any], args: tuple[Any, ...], nproc: int, *, threads_per_worker: int | None = None) -> Any:
    """Run ``fn(*args)`` in ``nproc`` worker processes on this machine; returns rank 0's result.

    Workers are started by torch's elastic agent (the API behind ``torchrun --standalone``) with
    a private c10d rendezvous on a free local port, so concurrent runs do not collide. ``fn``
    must be importable by name (workers are spawned, not forked).
    """
    require("torch")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise InvalidInputError(f"--nproc must be at least 1, received {nproc}")
    if threads_per_worker is None and "OMP_NUM_THREADS" not in os.environ:
        # like torchrun: do not let N workers each start one thread per core
        threads_per_worker = max(1, (os.cpu_count() or 1) // nproc)
    saved = os.environ.get("OMP_NUM_THREADS")
    if threads_per_worker is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads_per_worker)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"portanet-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
    )
    try:
        results = elastic_launch(config, fn)(*args)
    except ChildFailedError as exc:
        first = next(iter(exc.failures.values()), None)
        msg = (first.message if first is not None else str(exc)).strip()
        line = msg.splitlines()[-1] if msg else "unknown failure"
        raise RuntimeBackendError(f"a training worker failed: {line}") from exc
    finally:
        if threads_per_worker is not None:
            if saved is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = saved
    return results[0]
