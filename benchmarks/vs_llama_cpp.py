"""Our engine against llama.cpp on the same weights and the same token ids, in one run.

    python -m benchmarks.vs_llama_cpp [--model DIR] [--data data/local-16384]
    python -m benchmarks.vs_llama_cpp --shape qwen2.5-coder-0.5b --prompts 5   # a BYO shape

The model directory is exported to GGUF (training/gguf_export.py) and run by llama.cpp
through llama-cpp-python (`pip install llama-cpp-python`: it builds llama.cpp, ~8 minutes
on 2 cores). Both get the same held-out prompts as token ids of our tokenizer (so
tokenization does not differ; docs/models.md says what llama.cpp's own costs), decode
greedily, one prompt at a time: a request is the prefill of the prompt plus `--new` tokens.
Ours runs as the server runs it (model/inference.py) in the dtype the server picks on this
machine and in bf16, each with and without `--quantize int8`'s layers (the server's default
on a CPU), with `--quantize int8-dynamic`'s where this CPU runs them, and with the compiled
decode step (model/decode_step.py) the server uses once its warm-up compiled it, the
served arm once more with PyTorch's int8 kernel instead of ours (model/native.py); llama.cpp
runs the file in the dtype the model was saved in (bf16 for the shipped model and the
shape below) and its own q8_0 quantization of it (the int8 arms' counterpart). Each arm's
model is built when it is measured and dropped after it.
The arms are measured in `--rounds` rounds, alternately in the order above and reversed,
and each arm's fastest round is shown: this machine's speed drifts within a run, and arms
measured one after the other in a single order would carry it into their ratios.
Prints medians, how many prompts give our fp32 model's greedy tokens, the ratios to
llama.cpp, and the machine.

`--shape qwen2.5-coder-0.5b` measures the shape users bring instead of the shipped model:
a randomly initialised model with Qwen2.5-Coder-0.5B's dimensions (24 layers of 896, 14
query and 2 key/value heads, 4864 MLP, 151,936 embeddings, tied), built by transformers
from the configuration alone (nothing downloaded) as a Llama, so that our GGUF export
writes it: Qwen2's q/k/v biases (1,152 numbers a layer) are left out. Its vocabulary
holds our tokenizer's 16,384 tokens and unused rows beyond.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.machine import describe
from model import native
from model.checkpoint import LoadedModel, load_model_dir
from model.decode_step import compile_by_default, compile_decoding
from model.device import dtype_name
from model.inference import int8_by_default, prepare_for_inference
from model.paths import default_model_dir
from model.quantize import int8_activations_pay, use_native

# Qwen2.5-Coder-0.5B's config.json (the published one), as the Llama our exporter writes.
SHAPES = {"qwen2.5-coder-0.5b": dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
    rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True)}


def shaped_model_dir(shape: str, out: Path) -> Path:
    """A model directory in `out` with `shape`'s dimensions and random weights (bf16),
    made by transformers from the configuration alone, with our tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPES[shape], torch_dtype="bfloat16"))
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    shipped = Path(default_model_dir())
    for name in ("tokenizer.json", "codecomplete.json"):
        shutil.copy(shipped / name, out / name)
    return out


def quantize_q8_0(src: Path, dst: Path) -> Path:
    """llama.cpp's own q8_0 quantization of a GGUF file (what its users run int8 with)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(),
                                      ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} to q8_0")
    return dst


@torch.inference_mode()
def ours(model, prompt: list[int], new: int, capacity: int) -> tuple[list[int], float, float]:
    """Greedy tokens, prefill seconds, decode seconds, over a cache of `capacity` positions
    (the served context, as the server makes it: the compiled step is for that capacity)."""
    cache = model.new_cache(1, capacity)
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
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds over all arms, alternately forwards and backwards; each "
                         "arm's fastest round is shown")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None,
                    help="a randomly initialised model of this shape instead of --model")
    args = ap.parse_args(argv)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("error: llama-cpp-python is not installed: pip install llama-cpp-python",
              file=sys.stderr)
        return 2
    if not (args.model or default_model_dir()):
        print("error: no model directory given and no default model.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.model or default_model_dir())
        if args.shape:
            path = shaped_model_dir(args.shape, Path(tmp) / args.shape)
        return compare(args, path, Path(tmp))


def compare(args: argparse.Namespace, path: Path, tmp: Path) -> int:
    """Run every engine on the same prompts and print the table (files go in `tmp`)."""
    from llama_cpp import Llama

    from training.evaluate import validation_texts
    from training.gguf_export import export_gguf, stored_dtype

    def served(dtype: str, int8: bool, compiled: bool = False, dynamic: bool = False,
               pytorch_int8: bool = False) -> LoadedModel:
        loaded = load_model_dir(path, device="cpu", dtype=dtype)
        prepare_for_inference(loaded.model, int8=int8,      # as the server runs it
                              int8_activations=dynamic)
        if pytorch_int8:                                   # PyTorch's kernel, not ours
            use_native(loaded.model, on=False)
        if compiled:                                       # as the server does after warm-up
            step = compile_decoding(loaded.model, loaded.context)
            if not step.ready:
                print(f"note: no compiled decode step: {step.failed}", file=sys.stderr)
        return loaded

    why = native.load(build_if_missing=True)       # as the server's warm-up does
    if why is not None:
        print(f"note: no native int8 kernel: {why}", file=sys.stderr)
    lm = served("auto", False)                       # the dtype the server picks here
    here = dtype_name(lm.dtype)
    texts = [t for t in validation_texts(args.data) if len(t) > 8 * args.prompt]
    random.Random(0).shuffle(texts)
    prompts = [lm.tokenizer.encode(t)[:args.prompt] for t in texts[:args.prompts]]
    exact = load_model_dir(path, device="cpu", dtype="fp32").model
    reference = [ours(exact, p, args.new, lm.context)[0] for p in prompts]
    del exact
    default_int8 = int8_by_default(lm.device)       # --quantize auto, as the server starts
    compiled = compile_by_default(lm.device)        # --compile auto, after the warm-up
    served_name = (f"ours {here}{' + int8 decode' if default_int8 else ''}"
                   f"{' + compiled step' if compiled else ''} (server default here)")
    # each arm's model is made when it is measured and dropped after: a 0.5B model is
    # 1-2 GB, and ten of them at once would not fit a small machine
    arms: dict[str, Callable[[], torch.nn.Module]] = {
        f"ours {here}": lambda: lm.model,
        f"ours {here} + int8 decode": lambda: served(here, True).model}
    if compiled:
        arms[f"ours {here} + compiled step"] = lambda: served(here, False, True).model
    arms[served_name] = lambda: served(here, default_int8, compiled).model
    if default_int8 and native.loaded():
        arms[f"ours {here} + int8 decode, PyTorch's kernel"
             f"{' + compiled step' if compiled else ''}"] = \
            lambda: served(here, True, compiled, pytorch_int8=True).model
    if int8_activations_pay() is None:
        arms[f"ours {here} + int8-dynamic decode"] = \
            lambda: served(here, True, False, True).model
        if compiled:
            arms[f"ours {here} + int8-dynamic decode + compiled step"] = \
                lambda: served(here, True, True, True).model
    if here != "bfloat16":
        arms |= {"ours bf16": lambda: served("bf16", False).model,
                 "ours bf16 + int8 decode": lambda: served("bf16", True).model}
    threads = torch.get_num_threads()
    gguf = export_gguf(path, tmp / "model.gguf")
    q8 = quantize_q8_0(gguf, tmp / "model-q8_0.gguf")
    kind = f"llama.cpp {dtype_name(stored_dtype(path)).replace('bfloat16', 'bf16')}"

    def measure(name: str, run: Callable) -> tuple:
        run(prompts[0])                              # warm-up
        results = [run(p) for p in prompts]
        same = sum(r[0] == ref for r, ref in zip(results, reference, strict=True))
        pre = statistics.median(r[1] for r in results)
        dec = statistics.median(r[2] for r in results)
        req = statistics.median(r[1] + r[2] for r in results)
        return name, pre * 1e3 / args.prompt, dec * 1e3 / args.new, req * 1e3, same

    def llama(file: Path) -> Callable[[], Callable[[list[int]], tuple]]:
        def make() -> Callable[[list[int]], tuple]:
            llm = Llama(model_path=str(file), n_ctx=lm.context, n_batch=lm.context,
                        logits_all=True, n_threads=threads, verbose=False)
            return lambda p: theirs(llm, p, args.new)
        return make

    def engine(make_model: Callable[[], torch.nn.Module]
               ) -> Callable[[], Callable[[list[int]], tuple]]:
        def make() -> Callable[[list[int]], tuple]:
            model = make_model()
            return lambda p: ours(model, p, args.new, lm.context)
        return make

    runners = {name: engine(make) for name, make in arms.items()}
    runners |= {kind: llama(gguf), "llama.cpp q8_0": llama(q8)}
    # The machine's speed drifts within a run (a neighbour's load comes and goes), so
    # the arms are measured in rounds, in turn forwards and backwards; each arm's row is
    # its fastest round's.
    best: dict[str, tuple] = {}
    names = list(runners)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            run = runners[name]()
            row = measure(name, run)
            del run
            gc.collect()
            if name not in best or row[3] < best[name][3]:
                best[name] = row
    rows = [best[name] for name in names]
    print(f"machine  {describe(lm.device)}; llama.cpp and PyTorch on {threads} threads")
    print(f"model    {args.shape + ' (random weights)' if args.shape else path} "
          f"({lm.config.num_parameters() / 1e6:.1f}M parameters)")
    print(f"workload {len(prompts)} held-out prompts of {args.prompt} token ids, "
          f"{args.new} greedy tokens each; each arm's fastest of {args.rounds} rounds "
          f"(arms in turn forwards and backwards)")
    print()
    print("| engine | prefill ms/token | decode ms/token | request ms (median) | "
          "greedy = our fp32 |")
    print("|---|---|---|---|---|")
    for name, pre, dec, req, same in rows:
        print(f"| {name} | {pre:.3f} | {dec:.2f} | {req:.1f} | {same}/{len(prompts)} |")
    float_row, q8_row = rows[-2], rows[-1]
    print()
    for name, _, dec, req, _ in rows[:-2]:
        # the int8 arms against llama.cpp's int8 (q8_0), the others against its float file
        them = q8_row if "int8" in name else float_row
        print(f"{name}: request {req / them[3]:.2f}x {them[0]}'s, "
              f"decode {dec / them[2]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
