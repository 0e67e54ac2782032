"""torch.distributed helpers: rank/world, gathers for negatives, process-group set-up."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA); False if alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, without gradient."""
    if not is_distributed():
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def gather_with_local_grad(x: torch.Tensor) -> torch.Tensor:
    """Like :func:`gather`, but this rank's slice is ``x`` itself, so its gradient flows."""
    if not is_distributed():
        return x
    parts = list(gather(x).chunk(world_size()))
    parts[rank()] = x
    return torch.cat(parts)
