"""One line describing the machine a benchmark ran on, printed with every result."""

from __future__ import annotations

import os
import platform

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device | None = None) -> str:
    parts = [f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads)", platform.platform(terse=True)]
    if device is not None and device.type == "cuda":
        parts.insert(0, torch.cuda.get_device_name(device))
    return "; ".join(parts)
