"""Device and dtype selection: CUDA, then MPS, then CPU; bf16 where it is fast."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import torch

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def select_device(preference: str = "auto") -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; anything else is checked and returned."""
    pref = (preference or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(pref)
    except RuntimeError as e:
        raise ValueError(f"device {preference!r} is not a valid torch device ({e}).") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {preference!r} was requested but CUDA is not available.")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError(f"device {preference!r} was requested but MPS is not available.")
    return device


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def select_dtype(device: torch.device, preference: str = "auto") -> torch.dtype:
    """'auto': bf16 on CUDA with bf16 support and on CPUs with native bf16, fp16 on other
    CUDA and on MPS, fp32 otherwise. Names like 'bf16' or 'float32' force a dtype."""
    pref = (preference or "auto").lower()
    if pref != "auto":
        if pref not in DTYPES:
            raise ValueError(f"dtype {preference!r} is not one of {sorted(set(DTYPES))}.")
        return DTYPES[pref]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def clock(device: torch.device | None = None) -> float:
    """perf_counter once `device`'s queued work is done: a GPU's calls return before their
    work is, so an unsynchronised clock would time the launches (CPU calls are done)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def best_seconds(call: Callable[[], object], repeats: int = 5,
                 device: torch.device | None = None) -> float:
    """The fastest of `repeats` timed calls after one untimed one (which pays for kernel
    selection and allocation): how load-time choices between kernels are measured. Pass
    the `device` the call works on when it may be a GPU (see `clock`)."""
    call()
    best = float("inf")
    for _ in range(repeats):
        t0 = clock(device)
        call()
        best = min(best, clock(device) - t0)
    return best
