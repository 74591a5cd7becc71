"""Int8 weight-only linear layers against the float model on CPU: prefill and decode speed,
and for a trained model the held-out bits/byte and how often greedy continuations stay the
same. Both arms are prepared as the server prepares them (model/inference.py: fused
projections; `--quantize int8` on the right).

    python -m benchmarks.quantize [--model DIR] [--data data/local-16384] [--sizes 29M,110M]
        [--dtype auto|float32|bfloat16]     (auto: what the server picks on this CPU)
        [--activations bf16|int8]           (int8: `--quantize int8-dynamic`'s layers)
        [--kernel native|pytorch]           (weight-only int8's small calls: model/native.py's
                                             int8 x int8 kernel, as served where it builds,
                                             or PyTorch's int8-weight kernel)

`--model` (default: the shipped one) is measured for speed and quality (bits/byte with every
call through the int8 kernel, which the server uses only for decoding); `--sizes` adds
untrained models of the gpu-small shape and larger (speed only: quality needs training),
because int8 is meant for models larger than ours, whose decode reads more bytes a token.
Prints a table with the machine; see model/quantize.py for what is quantized.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from dataclasses import replace

import torch

from benchmarks.generate import timed
from benchmarks.machine import describe
from model import native, quantize
from model.checkpoint import load_model_dir
from model.config import ModelConfig
from model.device import select_dtype
from model.generate import GenerationConfig, generate
from model.inference import prepare_for_inference
from model.paths import default_model_dir
from model.quantize import int8_kernel, use_native
from model.transformer import Transformer

SHAPES = {   # hidden, intermediate, layers, heads, kv heads (vocab 16384, tied)
    "29M": (512, 1152, 8, 8, 4),        # the gpu-small preset
    "110M": (768, 2048, 12, 12, 4),
    "350M": (1024, 2816, 24, 16, 8),
}


def speed(model: Transformer, prompt: int, new: int, repeats: int) -> tuple[float, float]:
    """(prefill ms per token, decode ms per token) at batch 1, greedy, KV cache."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, model.config.vocab_size - 100, (1, prompt), generator=g)

    @torch.inference_mode()
    def prefill() -> None:
        model(ids, model.new_cache(), last_only=True)

    @torch.inference_mode()
    def decode() -> None:
        cache = model.new_cache()
        logits = model(ids, cache, last_only=True)
        t = time.perf_counter()
        for _ in range(new):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            logits = model(nxt, cache)
        times.append((time.perf_counter() - t) / new)

    times: list[float] = []
    pre = timed(prefill, repeats)
    for _ in range(repeats + 1):
        decode()
    return pre * 1e3 / prompt, statistics.median(times[1:]) * 1e3


def quality(lm, texts: list[str], prompts: list[list[int]], new: int) -> tuple[float, list]:
    """Held-out bits/byte and the greedy continuations of `prompts`."""
    from training.evaluate import bits_per_byte

    bpb = bits_per_byte(lm, texts)
    cfg = GenerationConfig(max_new_tokens=new, ignore_eos=True)
    outs = [generate(lm.model, lm.tokenizer, p, cfg).candidates[0].token_ids for p in prompts]
    return bpb, outs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir (default: the shipped one)")
    ap.add_argument("--data", default=None, help="prepared dataset: held-out files")
    ap.add_argument("--files", type=int, default=40, help="held-out files for bits/byte")
    ap.add_argument("--sizes", default="29M,110M", help=f"untrained shapes: {','.join(SHAPES)}")
    ap.add_argument("--prompt", type=int, default=448)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="auto", help="the float arm's dtype (auto: the server's)")
    ap.add_argument("--activations", choices=("bf16", "int8"), default="bf16",
                    help="the int8 arm's activations (int8: --quantize int8-dynamic)")
    ap.add_argument("--kernel", choices=("native", "pytorch"), default="native",
                    help="weight-only int8's kernel for small calls (native: model/native.py)")
    args = ap.parse_args(argv)
    path = args.model or default_model_dir()
    if path is None:
        print("error: no model directory given and no default model.", file=sys.stderr)
        return 2
    dtype = select_dtype(torch.device("cpu"), args.dtype)
    lm = load_model_dir(path, device="cpu", dtype=dtype)
    name = str(dtype).removeprefix("torch.")
    print(f"machine  {describe(lm.device)}")
    print(f"workload {args.prompt}-token prompt, {args.new} new tokens, greedy, batch 1, "
          f"{name} model, int8 products by the kernel below")
    dynamic = args.activations == "int8"
    native_kernel = not dynamic and args.kernel == "native"
    if native_kernel:
        why = native.load(build_if_missing=True)          # as the server's warm-up does
        if why is not None:
            print(f"note: no native int8 kernel: {why}", file=sys.stderr)

    def quantized(model: torch.nn.Module) -> int:
        n = int(prepare_for_inference(model, int8=True, int8_activations=dynamic)["int8 layers"])
        use_native(model, on=native_kernel)
        return n
    rows = []
    q = copy.deepcopy(lm.model)
    prepare_for_inference(lm.model)
    n = quantized(q)
    print(f"int8 kernel {int8_kernel(q)}")
    base = speed(lm.model, args.prompt, args.new, args.repeats)
    fast = speed(q, args.prompt, args.new, args.repeats)
    line = [f"{path} ({lm.config.num_parameters() / 1e6:.1f}M, {n} linear layers)", *base, *fast]
    if args.data:
        from training.evaluate import validation_texts
        texts = validation_texts(args.data)
        rng = random.Random(0)
        texts = rng.sample(texts, min(args.files, len(texts)))
        prompts = [lm.tokenizer.encode(t)[:200] for t in texts[:20]]
        bpb_b, out_b = quality(lm, texts, prompts, args.new)
        saved, quantize.ROWS = quantize.ROWS, 1 << 30    # bits/byte through the int8 path
        try:
            bpb_q, out_q = quality(replace(lm, model=q), texts, prompts, args.new)
        finally:
            quantize.ROWS = saved
        same = sum(a == b for a, b in zip(out_b, out_q, strict=True))
        line += [bpb_b, bpb_q, f"{same}/{len(prompts)}"]
    rows.append(line)
    for size in [s for s in args.sizes.split(",") if s]:
        h, i, layers, heads, kv = SHAPES[size]
        cfg = ModelConfig(vocab_size=16384, hidden_size=h, intermediate_size=i,
                          num_hidden_layers=layers, num_attention_heads=heads,
                          num_key_value_heads=kv, max_position_embeddings=1024)
        torch.manual_seed(0)
        m = Transformer(cfg).to(dtype).eval()
        m_q = copy.deepcopy(m)
        prepare_for_inference(m)
        n = quantized(m_q)
        rows.append([f"untrained {size} ({cfg.num_parameters() / 1e6:.1f}M, {n} linear layers)",
                     *speed(m, args.prompt, args.new, args.repeats),
                     *speed(m_q, args.prompt, args.new, args.repeats)])
    print()
    print(f"| model | {name} prefill ms/tok | {name} decode ms/tok | int8 prefill ms/tok | "
          f"int8 decode ms/tok | decode speed-up | {name} bits/byte | int8 bits/byte | "
          "same greedy 32 tokens |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        quality_cells = (f"{r[5]:.4f} | {r[6]:.4f} | {r[7]}" if len(r) > 5 else "— | — | —")
        print(f"| {r[0]} | {r[1]:.3f} | {r[2]:.2f} | {r[3]:.3f} | {r[4]:.2f} | "
              f"{r[2] / r[4]:.2f}x | {quality_cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
