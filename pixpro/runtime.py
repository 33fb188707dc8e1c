"""Where and how a pretraining process runs: device, torchrun/DDP set-up, determinism, interrupts."""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist

from pixpro.config import PretrainConfig
from pixpro.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """auto and cuda mean this node's GPU number LOCAL_RANK (global ranks span nodes)."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"pretrain.device = {name} but CUDA is not available; use auto or cpu")
    return torch.device(f"cuda:{local_rank}" if name == "cuda" else name)


def setup_runtime(cfg: PretrainConfig) -> Runtime:
    """Read torchrun's environment; one process without it. RANK and WORLD_SIZE are global (over
    all nodes), LOCAL_RANK counts this node's processes; nnodes x nproc must match torchrun's."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    launch = "`pixpro pretrain --launch` (as dvc.yaml does) on every node"
    if world_size != cfg.nnodes * cfg.nproc:
        raise ConfigError(f"pretrain.nnodes = {cfg.nnodes} x pretrain.nproc = {cfg.nproc} needs "
                          f"{cfg.nnodes * cfg.nproc} process(es) but WORLD_SIZE = {world_size}; launch with {launch}")
    # Set by torchrun: the right total split over nodes differently (1 x 4 instead of 2 x 2) is an error too.
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", cfg.nproc))
    if local_world_size != cfg.nproc:
        raise ConfigError(f"pretrain.nproc = {cfg.nproc} but {local_world_size} process(es) were started on "
                          f"this node; launch with {launch}")
    if cfg.batch_size % world_size:
        raise ConfigError(f"pretrain.batch_size = {cfg.batch_size} is not divisible by the {world_size} processes "
                          f"(pretrain.nnodes x pretrain.nproc)")
    device = select_device(cfg.device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # A dead peer makes collectives fail after this timeout instead of hanging forever.
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg.ddp_timeout_s))
    return Runtime(device, rank, world_size)


def configure_determinism(cfg: PretrainConfig, device: torch.device) -> None:
    if cfg.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; scatter/index_add backward and
        # cuDNN autotuning are the other GPU sources of run-to-run noise.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@contextlib.contextmanager
def graceful_interrupt() -> Iterator[Callable[[], bool]]:
    """First Ctrl-C asks the loop to stop after the current step; a second one aborts."""
    requested = {"stop": False}

    def handler(signum, frame):
        if requested["stop"]:
            raise KeyboardInterrupt
        requested["stop"] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread (e.g. some test runners): leave signals alone
        yield lambda: False
        return
    try:
        yield lambda: requested["stop"]
    finally:
        signal.signal(signal.SIGINT, previous)


def pair_normaliser(valid: torch.Tensor) -> Optional[torch.Tensor]:
    """Denominator that makes DDP's gradient the mean over all ranks' valid pairs, or None on one
    process. DDP averages gradients over ranks, so each rank divides its pair-loss sum by the
    global count / world size (at least 1 / world size: no valid pair anywhere gives loss 0)."""
    if distributed_world_size() == 1:
        return None
    total = valid.sum().float()
    dist.all_reduce(total)
    return total.clamp(min=1.0) / distributed_world_size()


def distributed_world_size() -> int:
    """Processes in the initialised process group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
