"""The native int8 kernel (model/kernels/q8_gemv.cpp): built on the user's machine, once.

Why a kernel of our own: decoding multiplies one row (or a few) of activations by every
weight matrix, and with int8 weights PyTorch's kernel converts each weight to a float
before multiplying. llama.cpp's q8_0 instead quantizes the activations to int8 as well
and multiplies int8 pairs, 32 per AVX2 instruction; on a 2-core AMD EPYC the kernel here
does the shipped model's products 2-2.5x faster than PyTorch's and reads a 0.5B model's
136 MB output head at 17 GB/s against 10 (docs/models.md has the numbers). The
activations' rounding (one scale per 32 values, as q8_0) is measured there too.

How: the C++ source ships with the package and is compiled with the machine's C++
compiler against the installed PyTorch (~15 s on 2 cores) into codecomplete's cache
folder, under a name that changes with the source, PyTorch's version and the compiler,
then loaded as a PyTorch operator (`torch.ops.codecomplete_native.q8_gemv`), which a
compiled decode step calls as it is. Where it cannot be built (no compiler, a CPU without
AVX2, not Linux, a failed build) or CODECOMPLETE_NATIVE=0 says not to, `why_not` says
why and model/quantize.py keeps PyTorch's kernel: nothing else changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import torch

from model.atomic import make_temp_dir
from model.paths import cache_dir

SOURCE = Path(__file__).resolve().parent / "kernels" / "q8_gemv.cpp"
DISABLE_ENV = "CODECOMPLETE_NATIVE"      # "0": never build or load the kernel
BUILD_TIMEOUT_S = 600
BLOCK = 32                               # the kernel's inner sizes must be a multiple

_lock = threading.Lock()
_loaded = False
_why: str | None = "not loaded yet"       # why the kernel is not loaded


def compiler() -> str | None:
    """The C++ compiler: $CXX, else g++ or c++ on the PATH."""
    named = os.environ.get("CXX")
    if named:
        return shutil.which(named)
    return shutil.which("g++") or shutil.which("c++")


def unsupported() -> str | None:
    """Why this machine cannot run the kernel at all, or None."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return f"{DISABLE_ENV}=0"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"built for x86-64 Linux only (this is {platform.system()} {platform.machine()})"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return f"the CPU has no AVX2 (PyTorch reports {capability})"
    if compiler() is None:
        return "no C++ compiler found (install g++, or set CXX)"
    if not SOURCE.is_file():
        return f"the kernel's source {SOURCE} is missing from this installation"
    return None


def _flags() -> list[str]:
    torch_dir = Path(torch.__file__).resolve().parent
    lib = torch_dir / "lib"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return ["-O3", "-mavx2", "-mfma", "-fopenmp", "-fPIC", "-shared", "-std=c++17", "-w",
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            f"-I{torch_dir / 'include'}",
            f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
            f"-L{lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib}"]


def library_path() -> Path:
    """Where the built kernel lives: named for everything that makes a build differ."""
    cxx = compiler() or ""
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.split("\n")[0] if cxx else ""
    except (OSError, subprocess.SubprocessError):
        version = ""
    key = hashlib.sha256("\n".join(
        [SOURCE.read_text(), torch.__version__, sys.version, version, *_flags()]).encode()
    ).hexdigest()[:16]
    return cache_dir() / "kernels" / f"q8_gemv-{key}.so"


def build(path: Path) -> str | None:
    """Compile the kernel to `path` (written whole or not at all); why not, or None."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        work = make_temp_dir(".build-", path.parent)
    except OSError as e:
        return f"cannot write the kernel to {path.parent} ({type(e).__name__})"
    try:
        out = work / path.name
        try:
            r = subprocess.run([compiler(), str(SOURCE), "-o", str(out), *_flags()],
                               capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            return f"compiling {SOURCE.name} failed ({type(e).__name__})"
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no message"])[-1]
            return f"compiling {SOURCE.name} failed: {last[:300]}"
        os.replace(out, path)
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load(build_if_missing: bool = False) -> str | None:
    """Load the kernel, building it first when `build_if_missing` and no build of it is
    cached; returns why it is not loaded, or None when `q8_gemv` can be called. A cached
    file that does not load (a truncated copy) is rebuilt when building is allowed."""
    global _loaded, _why
    with _lock:
        if not _loaded:
            _why = _load(build_if_missing)
            _loaded = _why is None
        return _why


def _load(build_if_missing: bool) -> str | None:
    why = unsupported()
    if why is not None:
        return why
    path = library_path()
    why = _open(path) if path.is_file() else "not built yet"
    if why is None or not build_if_missing:
        return why
    return build(path) or _open(path)


def _open(path: Path) -> str | None:
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as e:
        return f"the kernel {path} did not load ({type(e).__name__})"
    _register_fake()
    return None


def loaded() -> bool:
    return _loaded


def why_not() -> str | None:
    """Why the kernel is not loaded (None when it is)."""
    return _why if not _loaded else None


def _register_fake() -> None:
    """The operator's output shape, for tracing it into a compiled graph."""
    with contextlib.suppress(RuntimeError):      # registered already in this process
        @torch.library.register_fake("codecomplete_native::q8_gemv")
        def _(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
            return x.new_empty(x.shape[0], w.shape[0])


def q8_gemv(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """x [M, K] float32 times int8 w [N, K] with float32 row scales: [M, N] float32 (the
    kernel must be loaded)."""
    return torch.ops.codecomplete_native.q8_gemv(x, w, w_scale)
