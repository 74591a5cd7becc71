"""A served model's large weights in memory backed by 2 MB pages, where Linux allows it.

Decoding on a CPU streams every weight from memory once a token, and with 4 KB pages
a 0.5B model's gigabyte of weights is a quarter of a million pages whose translations
the CPU must walk as it reads. Linux backs memory with 2 MB pages ("transparent huge
pages") either always or only where a program asks (`madvise`, the usual default),
and PyTorch asks only when told to before it starts (THP_MEM_ALLOC_ENABLE=1).
llama.cpp reads its weights from a mapped file, which the page cache may already hold in
large pages. So after a model is prepared for serving, each weight of at least 2 MB is
copied once into its own mapping aligned to 2 MB and marked MADV_HUGEPAGE, and the model
refers to that copy; the old tensor is freed as it goes, so the peak is the model plus one
weight. On a 2-core AVX-512 AMD EPYC the 96 block products of a Qwen2.5-Coder-0.5B shape
took 14.3-14.8 ms a token against 15.5-15.9 (docs/models.md).

Nothing is computed differently: the same values at another address. Where the mapping
or the advice is refused (not Linux, huge pages turned off), the weight stays where it was.
"""

from __future__ import annotations

import mmap
import sys

import torch
from torch import nn

HUGE_PAGE = 2 * 2**20


def available() -> bool:
    """Whether this system can be asked for huge pages (Linux, THP not turned off)."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def huge_copy(t: torch.Tensor) -> torch.Tensor | None:
    """A contiguous copy of CPU tensor `t` in its own 2 MB-aligned mapping advised to use
    huge pages, or None where that is refused."""
    size = t.numel() * t.element_size()
    try:
        region = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError):
        return None
    whole = torch.frombuffer(region, dtype=torch.uint8)    # keeps `region` alive
    start = -whole.data_ptr() % HUGE_PAGE
    try:
        region.madvise(mmap.MADV_HUGEPAGE, start, size)
    except OSError:
        return None
    out = whole[start:start + size].view(t.dtype).view(t.shape)
    out.copy_(t)
    return out


@torch.no_grad()
def move_weights(model: nn.Module, min_bytes: int = HUGE_PAGE) -> int:
    """Copy the model's contiguous CPU parameters and buffers of at least `min_bytes` into
    huge-page mappings, in place (a tensor shared by two modules, such as tied embeddings
    and head, stays shared); returns the bytes moved (0 where unavailable)."""
    if not available():
        return 0
    moved: dict[tuple, torch.Tensor] = {}      # (address, shape, dtype) -> its copy
    total = 0
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is None or t.device.type != "cpu" or not t.is_contiguous() \
                        or t.numel() == 0 or t.numel() * t.element_size() < min_bytes:
                    continue
                key = (t.data_ptr(), tuple(t.shape), t.dtype)
                if key not in moved:
                    copy = huge_copy(t)
                    if copy is None:
                        return total
                    moved[key] = copy
                    moved[(copy.data_ptr(), tuple(t.shape), t.dtype)] = copy   # seen again
                    total += t.numel() * t.element_size()
                if isinstance(t, nn.Parameter):
                    t.data = moved[key]
                else:
                    table[name] = moved[key]
    return total
