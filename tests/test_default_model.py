"""The shipped default model (model/default/): loads in transformers with our outputs, fits
the size budget, and `server` without --model completes a function body with Python."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_model_dir
from model.paths import SHIPPED_MODEL_DIR, default_model_dir

transformers = pytest.importorskip("transformers")  # a dev dependency; always present in CI
ROOT = Path(__file__).resolve().parents[1]


def test_shipped_directory_is_the_default_and_small():
    assert (SHIPPED_MODEL_DIR / "config.json").is_file()
    assert default_model_dir() == SHIPPED_MODEL_DIR
    size = sum(f.stat().st_size for f in SHIPPED_MODEL_DIR.iterdir())
    assert size <= 60 * 2**20, f"{size / 2**20:.1f} MB"


def test_transformers_loads_the_shipped_model_with_our_logits():
    ours = load_model_dir(SHIPPED_MODEL_DIR, device="cpu", dtype=torch.float32)
    hf = transformers.LlamaForCausalLM.from_pretrained(
        str(SHIPPED_MODEL_DIR), torch_dtype=torch.float32).eval()
    ids = torch.tensor([ours.tokenizer.encode("import os\n\ndef read(path):\n    with open(")])
    with torch.no_grad():
        torch.testing.assert_close(ours.model(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


def test_server_without_model_completes_fibonacci():
    out = subprocess.run([sys.executable, "-m", "server.demo"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "model: " + str(SHIPPED_MODEL_DIR) in out.stderr
    body = out.stdout.split("def fibonacci(n):\n    ", 1)[1].split("\n" + "-" * 53)[0]
    assert body.strip(), out.stdout
    # Plausible Python: it parses (the last line may be cut by the token limit).
    lines = body.rstrip().split("\n")
    candidates = ["\n".join(lines), "\n".join(lines[:-1])] if len(lines) > 1 else [body]
    errors = []
    for candidate in candidates:
        try:
            ast.parse("def fibonacci(n):\n    " + candidate + "\n")
            break
        except SyntaxError as e:
            errors.append(e)
    else:
        pytest.fail(f"completion does not parse: {body!r} ({errors[0]})")
