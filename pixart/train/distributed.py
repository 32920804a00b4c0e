"""One code path for one CPU process and many GPUs: DeepSpeed's process group, always.

Under a launcher (deepspeed, torchrun) the rank variables are set for us; alone, we set them for a
world of one, since DeepSpeed otherwise falls back to MPI discovery (``No module named 'mpi4py'``).
"""

from __future__ import annotations

import atexit
import os
import socket

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(master_addr: str = "127.0.0.1", master_port: int | None = None) -> tuple[int, int]:
    """Join (or create) the process group; returns (rank, world_size)."""
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port or _free_port()),
        )
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        # a group still alive at interpreter exit tears its threads down from a destructor: a gloo rank
        # that had written all its outputs was seen to abort there ("terminate called without an active
        # exception", SIGABRT), which failed its launcher
        atexit.register(_leave)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def _leave() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def is_main() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
