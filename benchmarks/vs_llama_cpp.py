"""Our engine against llama.cpp on the same weights and the same token ids, in one run.

    python -m benchmarks.vs_llama_cpp [--model DIR] [--data data/local-16384]

The model directory is exported to GGUF (training/gguf_export.py) and run by llama.cpp
through llama-cpp-python (`pip install llama-cpp-python`: it builds llama.cpp, ~8 minutes
on 2 cores). Both get the same held-out prompts as token ids of our tokenizer (so
tokenization does not differ; docs/models.md says what llama.cpp's own costs), decode
greedily, one prompt at a time: a request is the prefill of the prompt plus `--new` tokens.
Ours runs as the server runs it (model/inference.py) in the dtype the server picks on this
machine and in bf16, each with and without `--quantize int8`'s layers (the server's default
on a CPU), and with the compiled decode step (model/decode_step.py) the server uses once
its warm-up compiled it. Prints medians, how many
prompts give our fp32 model's greedy tokens, the ratios to llama.cpp, and the machine.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.machine import describe
from model.checkpoint import LoadedModel, load_model_dir
from model.decode_step import compile_by_default, compile_decoding
from model.device import dtype_name
from model.inference import int8_by_default, prepare_for_inference
from model.paths import default_model_dir


@torch.inference_mode()
def ours(model, prompt: list[int], new: int) -> tuple[list[int], float, float]:
    """Greedy tokens, prefill seconds, decode seconds."""
    cache = model.new_cache()
    t0 = time.perf_counter()
    logits = model(torch.tensor([prompt]), cache, last_only=True)
    t1 = time.perf_counter()
    out = []
    for _ in range(new):
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        logits = model(torch.tensor([[nxt]]), cache)
    return out, t1 - t0, time.perf_counter() - t1


def theirs(llm, prompt: list[int], new: int) -> tuple[list[int], float, float]:
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    out = []
    for _ in range(new):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out, t1 - t0, time.perf_counter() - t1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir (default: the shipped one)")
    ap.add_argument("--data", default="data/local-16384", help="prepared dataset")
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--prompt", type=int, default=448, help="prompt tokens")
    ap.add_argument("--new", type=int, default=24)
    args = ap.parse_args(argv)
    try:
        from llama_cpp import Llama
    except ImportError:
        print("error: llama-cpp-python is not installed: pip install llama-cpp-python",
              file=sys.stderr)
        return 2
    from training.evaluate import validation_texts
    from training.gguf_export import export_gguf

    if not (args.model or default_model_dir()):
        print("error: no model directory given and no default model.", file=sys.stderr)
        return 2
    path = Path(args.model or default_model_dir())

    def served(dtype: str, int8: bool, compiled: bool = False) -> LoadedModel:
        loaded = load_model_dir(path, device="cpu", dtype=dtype)
        prepare_for_inference(loaded.model, int8=int8)     # as the server runs it
        if compiled:                                       # as the server does after warm-up
            step = compile_decoding(loaded.model, loaded.context)
            if not step.ready:
                print(f"note: no compiled decode step: {step.failed}", file=sys.stderr)
        return loaded

    lm = served("auto", False)                       # the dtype the server picks here
    here = dtype_name(lm.dtype)
    texts = [t for t in validation_texts(args.data) if len(t) > 8 * args.prompt]
    random.Random(0).shuffle(texts)
    prompts = [lm.tokenizer.encode(t)[:args.prompt] for t in texts[:args.prompts]]
    exact = load_model_dir(path, device="cpu", dtype="fp32").model
    reference = [ours(exact, p, args.new)[0] for p in prompts]
    default_int8 = int8_by_default(lm.device)       # --quantize auto, as the server starts
    compiled = compile_by_default(lm.device)        # --compile auto, after the warm-up
    served_name = (f"ours {here}{' + int8 decode' if default_int8 else ''}"
                   f"{' + compiled step' if compiled else ''} (server default here)")
    models = {f"ours {here}": lm.model,
              f"ours {here} + int8 decode": served(here, True).model}
    if compiled:
        models[f"ours {here} + compiled step"] = served(here, False, True).model
    models[served_name] = served(here, default_int8, compiled).model
    if here != "bfloat16":
        models |= {"ours bf16": served("bf16", False).model,
                   "ours bf16 + int8 decode": served("bf16", True).model}
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        gguf = export_gguf(path, Path(tmp) / "model.gguf")
        llm = Llama(model_path=str(gguf), n_ctx=lm.context, n_batch=lm.context,
                    logits_all=True, n_threads=threads, verbose=False)
        engines = {name: (lambda p, m=model: ours(m, p, args.new))
                   for name, model in models.items()}
        engines["llama.cpp bf16"] = lambda p: theirs(llm, p, args.new)
        rows = []
        for name, run in engines.items():
            run(prompts[0])                              # warm-up
            results = [run(p) for p in prompts]
            same = sum(r[0] == ref for r, ref in zip(results, reference, strict=True))
            pre = statistics.median(r[1] for r in results)
            dec = statistics.median(r[2] for r in results)
            req = statistics.median(r[1] + r[2] for r in results)
            rows.append((name, pre * 1e3 / args.prompt, dec * 1e3 / args.new, req * 1e3, same))
    print(f"machine  {describe(lm.device)}; llama.cpp and PyTorch on {threads} threads")
    print(f"model    {path} ({lm.config.num_parameters() / 1e6:.1f}M parameters)")
    print(f"workload {len(prompts)} held-out prompts of {args.prompt} token ids, "
          f"{args.new} greedy tokens each")
    print()
    print("| engine | prefill ms/token | decode ms/token | request ms (median) | "
          "greedy = our fp32 |")
    print("|---|---|---|---|---|")
    for name, pre, dec, req, same in rows:
        print(f"| {name} | {pre:.3f} | {dec:.2f} | {req:.1f} | {same}/{len(prompts)} |")
    theirs_row = rows[-1]
    print()
    for name, _, dec, req, _ in rows[:-1]:
        print(f"{name}: request {req / theirs_row[3]:.2f}x llama.cpp's, "
              f"decode {dec / theirs_row[2]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
