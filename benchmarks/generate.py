"""Generation speed of a model directory: prefill and decode tokens/s, with and without the
KV cache.

    python -m benchmarks.generate MODEL_DIR [--prompt 512] [--new 256] [--device auto]

Decode without the cache recomputes the whole sequence for every new token, which is what
the cache saves; the bar (issue 2) is a ≥5x decode speed-up at 512 + 256 tokens.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from benchmarks.machine import describe
from model.checkpoint import load_model_dir
from model.device import dtype_name
from model.generate import GenerationConfig, generate
from model.paths import default_model_dir

BAR = 5.0


def timed(fn, repeats: int) -> float:
    """Median wall seconds of `fn()` over `repeats` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@torch.inference_mode()
def decode_without_cache(model, prompt: list[int], new: int) -> None:
    ids = torch.tensor([prompt], device=model.embed_tokens.weight.device)
    for _ in range(new):
        nxt = model(ids, last_only=True)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", nargs="?", default=None)
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens")
    ap.add_argument("--new", type=int, default=256, help="new tokens to decode")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    path = args.model_dir or default_model_dir()
    if path is None:
        print("no model directory given and no default model built yet.", file=sys.stderr)
        return 2
    lm = load_model_dir(path, device=args.device, dtype=args.dtype)
    model, tok = lm.model, lm.tokenizer
    ctx = lm.config.max_position_embeddings
    if args.prompt + args.new > ctx:
        print(f"--prompt + --new must fit the model context of {ctx}.", file=sys.stderr)
        return 2
    g = torch.Generator().manual_seed(0)
    specials = torch.tensor(sorted(tok.special_ids))
    prompt = torch.randint(0, tok.vocab_size, (args.prompt,), generator=g)
    prompt[torch.isin(prompt, specials)] = tok.encode("x")[0]
    prompt = prompt.tolist()
    cfg = GenerationConfig(max_new_tokens=args.new, ignore_eos=True)

    def prefill() -> None:
        with torch.inference_mode():
            model(torch.tensor([prompt], device=lm.device), model.new_cache(), last_only=True)

    prefill_s = timed(prefill, args.repeats)
    res = generate(model, tok, prompt, cfg)
    assert len(res.candidates[0].token_ids) == args.new, "decode ended early"
    cached = [generate(model, tok, prompt, cfg) for _ in range(args.repeats)]
    decode_cached_s = statistics.median(r.decode_seconds for r in cached)
    uncached_s = timed(lambda: decode_without_cache(model, prompt, args.new), 1)

    rate_cached = args.new / decode_cached_s
    rate_uncached = args.new / uncached_s
    speedup = rate_cached / rate_uncached
    print(f"model    {path} ({lm.config.num_parameters() / 1e6:.1f}M parameters, "
          f"{lm.device}, {dtype_name(lm.dtype)})")
    print(f"machine  {describe(lm.device)}")
    print(f"workload {args.prompt}-token prompt, {args.new} new tokens, greedy, batch 1")
    print()
    print(f"{'measure':<28}{'tokens/s':>12}{'ms/token':>12}")
    print(f"{'prefill':<28}{args.prompt / prefill_s:>12,.0f}{prefill_s * 1e3 / args.prompt:>12.3f}")
    print(f"{'decode with KV cache':<28}{rate_cached:>12,.1f}{1e3 / rate_cached:>12.2f}")
    print(f"{'decode without KV cache':<28}{rate_uncached:>12,.1f}{1e3 / rate_uncached:>12.2f}")
    print()
    verdict = "meets" if speedup >= BAR else "MISSES"
    print(f"KV cache decode speed-up: {speedup:.1f}x ({verdict} the {BAR:.0f}x bar)")
    return 0 if speedup >= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
