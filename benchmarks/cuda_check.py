"""The CUDA path on a lent GPU: correctness against the CPU and decode latency, in one run.

    python -m benchmarks.cuda_check [--model model/default] [--out results.json]

- The default model on CUDA (bf16, what `--device auto` picks there) writes the same
  greedy tokens as on the CPU in fp32 for most prompts (bf16 rounding can flip a near tie;
  the count is printed), and `generate` with beams and healing runs there.
- Decode latency on CUDA, eager: a 448-token prefill plus 24 greedy tokens, for the
  default model and for a randomly initialised model of Qwen2.5-Coder-0.5B's shape (built
  from its published config numbers, nothing downloaded).
- What a captured decode step would cost: one step recorded as a CUDA graph at a fixed
  position and replayed (timing only: the replayed step writes the same cache slot, so
  this measures the launch-free cost of a step, not a usable decoder).

Every number is printed with the machine; nothing here runs in CI (no GPU there).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

import torch

from benchmarks.machine import describe
from model.checkpoint import load_model_dir
from model.config import ModelConfig
from model.generate import GenerationConfig, generate
from model.paths import default_model_dir
from model.transformer import Transformer

PROMPTS = [
    "import os\nimport sys\n\n\ndef main(argv):\n    ",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.",
    "def read_lines(path):\n    with open(path) as f:\n        return ",
    "for i, item in enumerate(items):\n    if ",
    "    def __repr__(self):\n        return f\"",
    "import json\n\n\ndef load(path):\n    with open(path, encoding=\"utf-8\") as f:\n",
]

# Qwen2.5-Coder-0.5B's published config.json numbers (the shape a bring-your-own user runs).
QWEN_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                tie_word_embeddings=True, attention_bias=True, model_type="qwen2")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def eager_latency(model: Transformer, prompt: list[int], new: int, device: torch.device,
                  repeats: int = 5) -> dict[str, float]:
    """Median prefill ms and decode ms/token of plain greedy steps."""
    pre, dec = [], []
    for _ in range(repeats + 1):
        cache = model.new_cache(1, capacity=len(prompt) + new + 1)
        sync(device)
        t0 = time.perf_counter()
        logits = model(torch.tensor([prompt], device=device), cache, last_only=True)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        sync(device)
        t1 = time.perf_counter()
        for _ in range(new):
            nxt = model(nxt, cache)[:, -1].argmax(-1, keepdim=True)
        sync(device)
        t2 = time.perf_counter()
        pre.append((t1 - t0) * 1e3)
        dec.append((t2 - t1) * 1e3 / new)
    return {"prefill_ms": statistics.median(pre[1:]),
            "decode_ms_per_token": statistics.median(dec[1:])}


def step(model: Transformer, ids: torch.Tensor, cache, start: int) -> torch.Tensor:
    """One decode step's arithmetic as `Transformer.forward` does it, without the cache's
    bookkeeping (a host copy of the ids, which a graph cannot capture)."""
    x = model.embed_tokens(ids)
    for i, block in enumerate(model.layers):
        x = block(x, model.rotary, i, cache, start)
    return model.lm_head(model.norm(x))


@torch.inference_mode()
def graph_step_ms(model: Transformer, prompt: list[int], device: torch.device,
                  replays: int = 200) -> float:
    """ms per replay of one decode step captured as a CUDA graph (timing only)."""
    cache = model.new_cache(1, capacity=len(prompt) + 2)
    model(torch.tensor([prompt], device=device), cache)
    static_in = torch.zeros(1, 1, dtype=torch.long, device=device)
    start = cache.length
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):                     # warm-up on the side stream, as required
            step(model, static_in, cache, start)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(model, static_in, cache, start)
    graph.replay()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(replays):
        graph.replay()
    sync(device)
    return (time.perf_counter() - t0) * 1e3 / replays


def attempt(fn, *args) -> object:
    """fn(*args), or the error's first line: one failed measurement keeps the others."""
    try:
        return fn(*args)
    except Exception as e:
        return f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(default_model_dir()))
    ap.add_argument("--prompt-tokens", type=int, default=448)
    ap.add_argument("--new", type=int, default=24)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: this check is for a GPU machine", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    results: dict[str, object] = {"machine": describe(), "gpu": torch.cuda.get_device_name(0),
                                  "torch": torch.__version__}
    gpu = load_model_dir(args.model, device="auto")
    cpu = load_model_dir(args.model, device="cpu", dtype="fp32")
    results["auto_device"] = f"{gpu.device} {gpu.dtype}"
    same = 0
    for text in PROMPTS:
        ids = gpu.tokenizer.encode(text)
        cfg = GenerationConfig(max_new_tokens=24)
        a = generate(gpu.model, gpu.tokenizer, ids, cfg).candidates[0].token_ids
        b = generate(cpu.model, cpu.tokenizer, ids, cfg).candidates[0].token_ids
        same += a == b
    results["greedy_same_as_cpu_fp32"] = f"{same}/{len(PROMPTS)}"
    beam = generate(gpu.model, gpu.tokenizer, gpu.tokenizer.encode("    return "),
                    GenerationConfig(max_new_tokens=16, stop=("\n",), beams=4), heal=b"se")
    results["beams_with_healing"] = beam.text
    rng = random.Random(7)
    prompt = [rng.randrange(gpu.tokenizer.vocab_size) for _ in range(args.prompt_tokens)]
    results["default_eager"] = eager_latency(gpu.model, prompt, args.new, device)
    results["default_graph_step_ms"] = attempt(graph_step_ms, gpu.model, prompt, device)
    torch.manual_seed(0)
    qwen = Transformer(ModelConfig(**QWEN_05B)).to(device=device, dtype=torch.bfloat16).eval()
    results["qwen05b_params_M"] = round(sum(p.numel() for p in qwen.parameters()) / 1e6, 1)
    results["qwen05b_eager"] = eager_latency(qwen, prompt, args.new, device)
    results["qwen05b_graph_step_ms"] = attempt(graph_step_ms, qwen, prompt, device)
    print(json.dumps(results, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
