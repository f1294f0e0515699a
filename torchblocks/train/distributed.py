"""Where this process sits in a torchrun job: rank, world size, device, process group.

torchrun (``torch.distributed.run``) starts one process per worker and hands each its place in
environment variables; ``init_method="env://"`` reads them. A process started without them trains
alone. Some of them set and others missing means a broken launch, refused before anything runs.
"""
import os
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch
import torch.distributed as dist

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Context:
    """This process's place: ``rank`` of ``world_size`` (0 of 1 alone), and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    launched: bool  # started by torchrun (a process group is created, even for one worker)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and progress."""
        return self.rank == 0

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"


def _int_variable(env: Mapping[str, str], name: str, minimum: int) -> int:
    text = env[name]
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ValueError(f"torchrun environment variable {name}={text!r} is not an integer >= {minimum}")
    return value


def context_from_env(device: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> Context:
    """Read the torchrun variables from ``env`` (default ``os.environ``) and pick the device.

    Args:
        device: "cpu", "cuda" or None (CUDA when available, else CPU). Under torchrun each
            process takes GPU ``LOCAL_RANK``.
    """
    env = os.environ if env is None else env
    if device is not None and device not in DEVICES:
        raise ValueError(f"Invalid value for argument `device`. Expected one of {DEVICES}. Received device={device!r}.")
    present = [name for name in TORCHRUN_VARIABLES if env.get(name)]
    missing = [name for name in TORCHRUN_VARIABLES if not env.get(name)]
    if present and missing:
        raise ValueError(
            f"torchrun environment half set: {', '.join(present)} set but {', '.join(missing)} missing; "
            f"launch with torchrun, which sets all of {', '.join(TORCHRUN_VARIABLES)}, or unset them"
        )
    rank, local_rank, world_size = 0, 0, 1
    if present:
        world_size = _int_variable(env, "WORLD_SIZE", 1)
        rank = _int_variable(env, "RANK", 0)
        local_rank = _int_variable(env, "LOCAL_RANK", 0)
        _int_variable(env, "MASTER_PORT", 1)
        if rank >= world_size:
            raise ValueError(f"torchrun environment: RANK={rank} is not below WORLD_SIZE={world_size}")
    use_cuda = device == "cuda" or (device is None and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                f"start at most that many processes per node (torchrun --nproc-per-node)"
            )
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    return Context(rank, local_rank, world_size, chosen, launched=bool(present))


def init_process_group(context: Context) -> None:
    """Join the torchrun job's process group (gloo on CPU, NCCL on GPU); alone, do nothing."""
    if not context.launched:
        return
    if context.device.type == "cuda":
        torch.cuda.set_device(context.device)
    dist.init_process_group(context.backend, init_method="env://", rank=context.rank, world_size=context.world_size)


def destroy_process_group(context: Context) -> None:
    if context.launched and dist.is_initialized():
        dist.destroy_process_group()


def sum_over_ranks(values: Sequence[float], context: Context) -> torch.Tensor:
    """The element-wise sum of ``values`` over every rank (float64, on the CPU)."""
    total = torch.tensor(values, dtype=torch.float64, device=context.device)
    if context.launched and context.world_size > 1:
        dist.all_reduce(total)
    return total.cpu()
