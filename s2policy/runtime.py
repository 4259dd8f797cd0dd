"""Where code runs: device and dtype choice, and torch.distributed set-up under ``torchrun``."""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

#: Compute dtypes by name (``float32`` runs without autocast).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; under torchrun, the local GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA GPU is visible; use device=cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """``auto`` -> ``bfloat16`` on a GPU, ``float32`` on a CPU."""
    if dtype == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    return dtype


def autocast(device: torch.device, dtype: str) -> torch.autocast:
    """Autocast to ``dtype`` on ``device`` (a no-op context for ``float32``)."""
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype], enabled=dtype != "float32")


def init_distributed() -> tuple[int, int]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``); returns
    ``(rank, world_size)``. NCCL on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        logger.info(
            "joined process group: rank %d of %d (%s)", torch.distributed.get_rank(), world, backend
        )
    return torch.distributed.get_rank(), world


def shutdown_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def describe_device(device: torch.device) -> str:
    """One line naming the machine a measurement ran on (for benchmark headers)."""
    import platform

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cores = os.cpu_count()
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads of {cores} cores"
