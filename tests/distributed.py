"""Run a function in N local CPU processes joined by a gloo process group, for tests of distributed code.

Each process gets the torchrun-style environment (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so code that builds its own process group
from the environment (e.g. `accelerate.Accelerator()`) finds the one already made.
The function must be defined at module level (it is pickled into spawned processes).
"""

import os
import socket
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A localhost TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _process_main(
    rank: int, fn: Callable[..., Any], world_size: int, port: int, args: tuple, result_dir: str
) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    # The machine's cores are shared: one thread per process keeps N processes from thrashing.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=120))
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(result_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_in_processes(
    fn: Callable[..., Any], world_size: int = 2, args: tuple = (), timeout_s: float = 300.0
) -> list[Any]:
    """Call `fn(rank, world_size, *args)` in `world_size` spawned gloo processes; return their results by rank.

    Results travel back through `torch.save` (read with ``weights_only=True``), so they may hold tensors and plain
    containers and numbers, no other objects. Raises the child's
    exception (torch.multiprocessing.ProcessRaisedException) if any process fails, and
    TimeoutError (after terminating the processes) if they do not finish in `timeout_s`.
    """
    with tempfile.TemporaryDirectory() as result_dir:
        context = mp.start_processes(
            _process_main,
            args=(fn, world_size, free_port(), args, result_dir),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout_s
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.terminate()
                raise TimeoutError(f"{fn.__name__} did not finish in {world_size} processes within {timeout_s} s")
        return [torch.load(Path(result_dir) / f"rank{rank}.pt", weights_only=True) for rank in range(world_size)]
