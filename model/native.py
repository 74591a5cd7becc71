"""The native kernels (model/kernels/): built on the user's machine, once.

CPU kernels that PyTorch has no fast form of for decoding's shapes, built into one
library: `q8_gemv` (int8 x int8 products, q8_gemv.cpp), `float_gemv` (bf16 and fp32
weights times a few rows, read in place as one stream; float_gemv.cpp), and
`decode_attention` and `branch_attention` (decoded tokens' attention over the KV cache,
plain and shared by beams; decode_attention.cpp). Each source's header says why.

Why an int8 kernel of our own: decoding multiplies one row (or a few) of activations by every
weight matrix, and with int8 weights PyTorch's kernel converts each weight to a float
before multiplying. llama.cpp's q8_0 instead quantizes the activations to int8 as well
and multiplies int8 pairs, 32 per AVX2 instruction; on a 2-core AMD EPYC the kernel here
does the shipped model's products 2-2.5x faster than PyTorch's and reads a 0.5B model's
136 MB output head at 17 GB/s against 10 (docs/models.md has the numbers). The
activations' rounding (one scale per 32 values, as q8_0) is measured there too.

How: the C++ sources ship with the package and are compiled with the machine's C++
compiler against the installed PyTorch (~25 s on 2 cores) into codecomplete's cache
folder, under a name that changes with the sources, PyTorch's version and the compiler,
then loaded as PyTorch operators (`torch.ops.codecomplete_native.*`), which a compiled
decode step calls as they are. Where they cannot be built (no compiler, a CPU without
AVX2, not Linux, a failed build) or CODECOMPLETE_NATIVE=0 says not to, `why_not` says
why and model/quantize.py and model/decode_step.py keep PyTorch's operations: nothing
else changes.
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

SOURCES = tuple(Path(__file__).resolve().parent / "kernels" / name
                for name in ("q8_gemv.cpp", "float_gemv.cpp", "decode_attention.cpp"))
DISABLE_ENV = "CODECOMPLETE_NATIVE"      # "0": never build or load the kernels
BUILD_TIMEOUT_S = 600
BLOCK = 32                               # the kernel's inner sizes must be a multiple

_lock = threading.Lock()
_loaded = False
_why: str | None = "not loaded yet"       # why the kernels are not loaded


def compiler() -> str | None:
    """The C++ compiler: $CXX, else g++ or c++ on the PATH."""
    named = os.environ.get("CXX")
    if named:
        return shutil.which(named)
    return shutil.which("g++") or shutil.which("c++")


def unsupported() -> str | None:
    """Why this machine cannot run the kernels at all, or None."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return f"{DISABLE_ENV}=0"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"built for x86-64 Linux only (this is {platform.system()} {platform.machine()})"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return f"the CPU has no AVX2 (PyTorch reports {capability})"
    if compiler() is None:
        return "no C++ compiler found (install g++, or set CXX)"
    missing = [str(p) for p in SOURCES if not p.is_file()]
    if missing:
        return f"the kernels' source {missing[0]} is missing from this installation"
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
    """Where the built kernels live: named for everything that makes a build differ."""
    cxx = compiler() or ""
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.split("\n")[0] if cxx else ""
    except (OSError, subprocess.SubprocessError):
        version = ""
    key = hashlib.sha256("\n".join(
        [*(p.read_text() for p in SOURCES), torch.__version__, sys.version, version,
         *_flags()]).encode()).hexdigest()[:16]
    return cache_dir() / "kernels" / f"native-{key}.so"


def build(path: Path) -> str | None:
    """Compile the kernels to `path` (written whole or not at all); why not, or None."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        work = make_temp_dir(".build-", path.parent)
    except OSError as e:
        return f"cannot write the kernels to {path.parent} ({type(e).__name__})"
    try:
        out = work / path.name
        try:
            r = subprocess.run([compiler(), *map(str, SOURCES), "-o", str(out), *_flags()],
                               capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            return f"compiling the kernels failed ({type(e).__name__})"
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no message"])[-1]
            return f"compiling the kernels failed: {last[:300]}"
        os.replace(out, path)
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load(build_if_missing: bool = False) -> str | None:
    """Load the kernels, building them first when `build_if_missing` and no build of them
    is cached; returns why they are not loaded, or None when they can be called. A cached
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
        return f"the kernels {path} did not load ({type(e).__name__})"
    _register_fake()
    return None


def loaded() -> bool:
    return _loaded


def why_not() -> str | None:
    """Why the kernels are not loaded (None when it is)."""
    return _why if not _loaded else None


def _register_fake() -> None:
    """The operators' output shapes, for tracing them into a compiled graph."""
    with contextlib.suppress(RuntimeError):      # registered already in this process
        @torch.library.register_fake("codecomplete_native::q8_gemv")
        def _(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
            return x.new_empty(x.shape[0], w.shape[0])
    with contextlib.suppress(RuntimeError):
        @torch.library.register_fake("codecomplete_native::float_gemv")
        def _(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return x.new_empty(x.shape[0], w.shape[0])
    with contextlib.suppress(RuntimeError):
        @torch.library.register_fake("codecomplete_native::decode_attention")
        def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
              ) -> torch.Tensor:
            return q.new_empty(q.shape)
    with contextlib.suppress(RuntimeError):
        @torch.library.register_fake("codecomplete_native::branch_attention")
        def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: torch.Tensor,
              own_k: torch.Tensor, own_v: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
            return q.new_empty(q.shape)


def q8_gemv(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """x [M, K] float32 times int8 w [N, K] with float32 row scales: [M, N] float32 (the
    kernel must be loaded)."""
    return torch.ops.codecomplete_native.q8_gemv(x, w, w_scale)


def float_gemv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [M, K] float32 or bfloat16 times w [N, K] float32 or bfloat16: [M, N] in x's
    dtype, summed in float32 (the kernels must be loaded)."""
    return torch.ops.codecomplete_native.float_gemv(x, w)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
                     ) -> torch.Tensor:
    """Decoded tokens' attention over a cache: q [Hkv, R, D] float32 (the query rows of
    each K/V head: its query heads, times a draft's positions) over k, v [Hkv, capacity, D]
    (float32 or bfloat16, the cache's buffers), row r seeing positions 0..pos[r % P] (`pos`
    [P] int64); returns [Hkv, R, D] float32 (the kernels must be loaded)."""
    return torch.ops.codecomplete_native.decode_attention(q, k, v, pos)


def branch_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: torch.Tensor,
                     own_k: torch.Tensor, own_v: torch.Tensor, own: torch.Tensor
                     ) -> torch.Tensor:
    """Attention of rows continuing one shared prefix (beams, scored names; see
    attention.attend_shared): q [B, Hkv, R, D] float32 sees the first `prefix` ([1] int64)
    positions of k, v [Hkv, capacity, D] and its row's own positions 0..own[r % P] of
    own_k, own_v [B, Hkv, room, D]; returns [B, Hkv, R, D] float32."""
    return torch.ops.codecomplete_native.branch_attention(q, k, v, prefix, own_k, own_v, own)


def multiplies(w: torch.Tensor) -> bool:
    """Whether `float_gemv` is loaded and takes a weight like `w` [N, K]."""
    return _loaded and w.device.type == "cpu" and w.dim() == 2 \
        and w.dtype in (torch.float32, torch.bfloat16)


def attends(k: torch.Tensor) -> bool:
    """Whether `decode_attention` is loaded and takes a cache like `k` [..., D]."""
    return _loaded and k.device.type == "cpu" and k.shape[-1] % 8 == 0 \
        and k.shape[-1] <= 256 and k.dtype in (torch.float32, torch.bfloat16)
