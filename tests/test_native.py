"""model/native.py: the int8 x int8 kernel, built here with the machine's compiler (the
attention kernel built with it: tests/test_decode_attention.py).

On a machine the kernel is not for (not x86-64 Linux, no AVX2, no C++ compiler:
`native.unsupported()`), the tests that need it skip, saying why; everywhere else a kernel
that does not build or load fails them, since it would cost every user its speed. The
fallback to PyTorch's kernel is tested everywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from model import native
from model.quantize import Int8Linear, _rounded, int8_kernel, quantize_int8, use_native


@pytest.fixture(scope="module")
def kernel(native_kernels):
    return native.q8_gemv


def q8_reference(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """The kernel's arithmetic in plain PyTorch: each row of x rounded to int8 per block of
    32 values (scale = the block's largest magnitude / 127), block by block integer dot
    products with the int8 weight rows, scaled by the block's and the row's scales."""
    M, K = x.shape
    blocks = x.reshape(M, K // 32, 32)
    scale = blocks.abs().amax(-1) / 127                                    # [M, B]
    inverse = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))
    xq = torch.round(blocks * inverse[..., None]).to(torch.int64)           # [M, B, 32]
    wq = w.to(torch.int64).reshape(w.shape[0], K // 32, 32)                # [N, B, 32]
    dots = torch.einsum("mbk,nbk->mnb", xq, wq).to(torch.float64)          # exact integers
    return ((dots * scale.double()[:, None, :]).sum(-1) * w_scale.double()).float()


@pytest.mark.parametrize("m,n,k", [(1, 37, 64), (3, 8, 96), (9, 130, 256), (16, 5, 32)])
def test_the_kernel_computes_int8_blocks_times_int8_rows(kernel, m, n, k):
    """Against the same arithmetic in PyTorch (the order of float sums aside), for row
    counts that are and are not multiples of the 4 rows computed together, and close to
    the float product of the dequantized weight (the activations' rounding)."""
    g = torch.Generator().manual_seed(m * 1000 + n)
    weight = torch.randn(n, k, generator=g) * 0.05
    scale, w = _rounded(weight)
    x = torch.randn(m, k, generator=g)
    x[0, :32] = 0                                   # an all-zero block: scale 0, no NaN
    got = kernel(x, w, scale)
    assert got.shape == (m, n) and got.dtype == torch.float32
    torch.testing.assert_close(got, q8_reference(x, w, scale), rtol=1e-5, atol=1e-5)
    exact = x @ (w.float() * scale[:, None]).t()
    assert ((got - exact).norm() / exact.norm()).item() < 0.02
    # rows do not mix: each row of a call is what a call of that row alone gives
    for i in range(m):
        assert torch.equal(kernel(x[i:i + 1], w, scale)[0], got[i])


def test_empty_calls_give_empty_or_zero_results(kernel):
    assert kernel(torch.zeros(0, 64), torch.zeros(3, 64, dtype=torch.int8),
                  torch.ones(3)).shape == (0, 3)
    assert torch.equal(kernel(torch.ones(2, 0), torch.zeros(3, 0, dtype=torch.int8),
                              torch.ones(3)), torch.zeros(2, 3))


def test_the_kernel_refuses_shapes_it_cannot_compute(kernel):
    w = torch.zeros(4, 40, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        kernel(torch.zeros(1, 40), w, torch.ones(4))
    with pytest.raises(RuntimeError, match="int8 w"):
        kernel(torch.zeros(1, 40, dtype=torch.bfloat16), w, torch.ones(4))


def test_int8_layers_decode_with_the_kernel_and_prefill_with_floats(kernel, random_model):
    """quantize_int8 switches the layers to the loaded kernel (a layer whose inner size
    is not a multiple of 32 keeps PyTorch's), small calls go through it, and use_native
    switches back."""
    import copy

    model = copy.deepcopy(random_model).float()
    quantize_int8(model)
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert all(m.q8 for m in layers)
    assert int8_kernel(model).startswith("native")
    layer = model.layers[0].mlp.up_proj
    x = torch.randn(2, layer.in_features)
    torch.testing.assert_close(layer(x), kernel(x, layer.weight, layer.row_scales),
                               rtol=0, atol=0)
    assert use_native(model, on=False) == len(layers)
    assert not any(m.q8 for m in layers) and int8_kernel(model).startswith("PyTorch")
    assert not torch.equal(layer(x), kernel(x, layer.weight, layer.row_scales))


def printed(code: str, **env: str) -> list[str]:
    """The lines a fresh Python process running `code` prints (it must succeed)."""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, env={**os.environ, **env},
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()


def test_a_cached_kernel_that_does_not_load_is_rebuilt(tmp_path, kernel):
    """A truncated or foreign file where the built kernel should be (a crash mid-copy)
    is replaced by a fresh build, not loaded and not crashed on; without building
    allowed, it is reported."""
    lines = printed(
        "from model import native\n"
        "p = native.library_path(); p.parent.mkdir(parents=True)\n"
        "p.write_bytes(b'not a shared library')\n"
        "print(native.load())\n"
        "print(native.load(build_if_missing=True))\n"
        "import torch\n"
        "w = torch.ones(2, 32, dtype=torch.int8)\n"
        "y = native.q8_gemv(torch.ones(1, 32), w, torch.ones(2))\n"
        "print([round(v, 4) for v in y[0].tolist()])\n",
        CODECOMPLETE_CACHE=str(tmp_path / "cache"))
    assert "did not load" in lines[0]
    assert lines[1] == "None"
    assert lines[2] == "[32.0, 32.0]"            # 32 products of ones


def test_without_a_compiler_int8_keeps_pytorchs_kernel_and_says_why(tmp_path, tiny_model_dir):
    """No C++ compiler (CXX names none): nothing is built, the int8 layers keep PyTorch's
    kernel, the model still answers, and the reason is what the status shows."""
    why, status, attention, answered = printed(
        "from server.cli import load_engine, parse_args\n"
        f"engine, error = load_engine(parse_args(['--model', {str(tiny_model_dir)!r}, "
        "'--quantize', 'int8']))\n"
        "print(engine.native_kernel())\n"
        "print(engine.describe()['int8_kernel'])\n"
        "print(engine.describe()['attention_kernel'])\n"
        "engine.complete('def f(x):\\n    return x', '\\n')\n"
        "print('answered')\n",
        CODECOMPLETE_CACHE=str(tmp_path / "cache"), CXX="no-such-compiler")[-4:]
    assert why.startswith("no C++ compiler found")
    assert status.startswith("PyTorch int8 weight-only (no C++ compiler found")
    assert attention.startswith("PyTorch (no C++ compiler found")
    assert answered == "answered"
    assert not (tmp_path / "cache" / "kernels").exists() or \
        not list((tmp_path / "cache" / "kernels").glob("*.so"))


def test_the_engine_switches_its_int8_layers_to_the_kernel(kernel, tiny_model_dir):
    """A server whose kernel was built at setup uses it from the start; one that builds it
    in its warm-up (`native_kernel`) switches every weight-only int8 layer to it, and its
    status says which kernel runs."""
    from server.cli import load_engine, parse_args

    engine, error = load_engine(parse_args(["--model", str(tiny_model_dir), "--quantize",
                                            "int8", "--compile", "none"]))
    assert error is None
    layers = [m for m in engine.loaded.model.modules() if isinstance(m, Int8Linear)]
    assert layers and all(m.q8 for m in layers)
    assert engine.describe()["int8_kernel"].startswith("native")
    use_native(engine.loaded.model, on=False)          # as before a first start's build
    assert engine.native_kernel() is None
    assert all(m.q8 for m in layers)
    assert engine.describe()["int8_kernel"].startswith("native")
    none, _ = load_engine(parse_args(["--model", str(tiny_model_dir), "--quantize", "none"]))
    assert none.native_kernel() is None and none.describe()["int8_kernel"] is None


def test_a_float_model_measures_its_layers_again_when_the_kernels_load(kernel,
                                                                      tiny_model_dir,
                                                                      monkeypatch):
    """A server of a float model (`--quantize none`) whose kernels load only in its
    warm-up (a first start builds them) measures its layers' product forms again, the
    native product among them, and its status counts the forms of every layer."""
    from model.inference import MeasuredLinear
    from server.cli import load_engine, parse_args

    engine, error = load_engine(parse_args(["--model", str(tiny_model_dir), "--quantize",
                                            "none", "--compile", "none"]))
    assert error is None
    before = [m for m in engine.loaded.model.modules() if isinstance(m, MeasuredLinear)]
    assert before
    monkeypatch.setattr(native, "_loaded", False)          # as before a first build
    assert engine.native_kernel() is None and native.loaded()
    after = [m for m in engine.loaded.model.modules() if isinstance(m, MeasuredLinear)]
    assert len(after) == len(before) and not set(map(id, after)) & set(map(id, before))
    forms = engine.describe()["float_products"]
    one, few = forms.split("; ")
    assert one.startswith("1 row: ") and few.startswith("4 rows: ")
    assert sum(int(part.split()[-1]) for part in one[len("1 row: "):].split(", ")) \
        == len(after)
    assert engine.native_kernel() is None                  # loaded: nothing measured again
    assert [m for m in engine.loaded.model.modules() if isinstance(m, MeasuredLinear)] \
        == after
    int8, _ = load_engine(parse_args(["--model", str(tiny_model_dir), "--quantize", "int8",
                                      "--compile", "none"]))
    assert int8.describe()["float_products"] is None


def test_an_unwritable_cache_folder_is_a_reason_not_an_error(tmp_path, monkeypatch):
    """The kernel's folder cannot be made (a file is in the way): build says why and
    raises nothing, so the server's warm-up goes on to compile its step."""
    blocker = tmp_path / "cache"
    blocker.write_text("a file, not a folder")
    monkeypatch.setenv("CODECOMPLETE_CACHE", str(blocker))
    why = native.build(native.library_path())
    assert why is not None and why.startswith("cannot write the kernels to")
    assert blocker.read_text() == "a file, not a folder"
