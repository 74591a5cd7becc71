"""How to blend the project memory into the model: bits per byte of held-out files, each
read left to right with the rest of its repository and its own earlier text counted
(training.evaluate.memory_positions), under several ways of mixing, on the same tokens.

    python -m benchmarks.memory_mixing [--model DIR] [--data data/local-16384] [--files 60]

- nested confidence (shipped, completion/cache_lm.Mixer): for each level, workspace then
  document, its longest match: p <- (1 - lam) p + lam c/n, lam = w (1 - 2^-(k/2)) n/(n+1):
  longer and more frequent matches weigh more (SLP-Core's confidence, on BPE tokens);
- confidence, most local only: the same with the most local level's longest match alone;
- fixed: p <- (1 - lam) p + lam c/n of the longest match of the most local level;
- entropy: as fixed, lam scaled by the model's normalised entropy at that token: the
  memory speaks where the model is unsure;
- dirichlet: for every matched context length, shortest first, both levels,
  p <- (c + alpha p) / (n + alpha); and the same on each level's longest match only.
Prints each variant's bits per byte, its drop from the model's, and the machine.
"""

from __future__ import annotations

import argparse
import math
import random
import sys

import torch

from benchmarks.machine import describe
from completion.cache_lm import Mixer, confidence
from model.checkpoint import load_model_dir
from model.paths import default_model_dir
from training.data import held_out_repos
from training.evaluate import memory_files, memory_positions


def collect(lm, repos, picked):
    """Per token: the model's probability, its byte count, the matches (level, k, n, c)
    in the order the shipped blend applies them, and the model's entropy (nats)."""
    out = []
    tok = lm.tokenizer
    mixer = Mixer([], [])
    for p, history, target, workspace, document in memory_positions(lm, repos, picked):
        found = []
        for level, lookup in enumerate((workspace, document)):
            for k, nxt, cnt in mixer.matches(lookup, history):
                found.append((level, k, int(cnt.sum()), int(cnt[nxt == target].sum()),
                              int(cnt.max())))
        out.append((p, len(tok.token_bytes(target)), found))
    return out


def dirichlet(rec, alpha: float) -> float:
    p, _, found = rec
    for _, _, n, c, _ in found:
        p = (c + alpha * p) / (n + alpha)
    return p


def per_level_longest(found):
    """Each level's longest match, the least local level first."""
    best: dict[int, tuple] = {}
    for f in found:
        if f[0] not in best or f[1] > best[f[0]][1]:
            best[f[0]] = f
    return [best[level] for level in sorted(best)]


def nested(rec, w: float) -> float:
    p, _, found = rec
    for _, k, n, c, _ in per_level_longest(found):
        lam = confidence(k, n, w)
        p = (1 - lam) * p + lam * c / n
    return p


def dirichlet_longest(rec, alpha: float) -> float:
    p, _, found = rec
    for _, _, n, c, _ in per_level_longest(found):
        p = (c + alpha * p) / (n + alpha)
    return p


def longest(found):
    """The longest match of the most local level that matched."""
    best = None
    for f in found:
        if best is None or f[0] > best[0] or (f[0] == best[0] and f[1] > best[1]):
            best = f
    return best


def fixed(rec, lam: float) -> float:
    p, _, found = rec
    f = longest(found)
    return p if f is None else (1 - lam) * p + lam * f[3] / f[2]


def most_local(rec, w: float) -> float:
    p, _, found = rec
    f = longest(found)
    if f is None:
        return p
    lam = confidence(f[1], f[2], w)
    return (1 - lam) * p + lam * f[3] / f[2]


def bpb(recs, fn) -> float:
    bits = sum(-math.log2(max(fn(r), 1e-30)) for r in recs)
    return bits / sum(r[1] for r in recs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(default_model_dir()))
    ap.add_argument("--data", default="data/local-16384")
    ap.add_argument("--files", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    lm = load_model_dir(args.model, device="cpu", dtype="fp32")
    repos = held_out_repos(args.data)
    picked = memory_files(repos, args.files, random.Random(args.seed))
    with torch.inference_mode():
        recs = collect(lm, repos, picked)
    entropy = entropies(lm, repos, picked)
    assert len(entropy) == len(recs), (len(entropy), len(recs))
    base = bpb(recs, lambda r: r[0])
    rows = [("model alone", base)]
    for w in (0.6, 0.7, 0.8, 0.9, 1.0):
        rows.append((f"nested confidence w={w:g}", bpb(recs, lambda r, w=w: nested(r, w))))
    for w in (0.7, 0.9):
        rows.append((f"most local only w={w:g}", bpb(recs, lambda r, w=w: most_local(r, w))))
    for lam in (0.2, 0.3, 0.5):
        rows.append((f"fixed lambda={lam:g}", bpb(recs, lambda r, lam=lam: fixed(r, lam))))
    for a in (2, 8):
        rows.append((f"dirichlet all alpha={a:g}", bpb(recs, lambda r, a=a: dirichlet(r, a))))
    for a in (1, 2, 4):
        rows.append((f"dirichlet longest alpha={a:g}",
                     bpb(recs, lambda r, a=a: dirichlet_longest(r, a))))
    hmax = math.log(lm.tokenizer.vocab_size)
    gated = list(zip(recs, (min(1.0, 3 * h / hmax) for h in entropy), strict=True))
    for lam in (0.3, 0.5, 0.7):
        rows.append((f"entropy-gated lambda={lam:g}",
                     sum(-math.log2(max(fixed(r, lam * g), 1e-30)) for r, g in gated)
                     / sum(r[1] for r in recs)))
    matched = sum(bool(r[2]) for r in recs) / len(recs)
    print(f"project memory mixing, {args.files} held-out files, {len(recs)} tokens "
          f"({matched:.0%} with a match), {args.model}; {describe()}")
    for name, value in rows:
        print(f"{name:<28} {value:.4f} bits/byte  {100 * (1 - value / base):+.1f}%")
    return 0


@torch.inference_mode()
def entropies(lm, repos, picked) -> list[float]:
    """The model's entropy (nats) before each token of the files, in memory_positions'
    order: the same windows as token_nats (non-overlapping, after <|endoftext|>)."""
    tok, model, ctx = lm.tokenizer, lm.model, lm.config.max_position_embeddings
    out: list[float] = []
    for repo, path in picked:
        ids = tok.encode(repos[repo][path])
        inputs = torch.tensor([tok.eot_id, *ids[:-1]])      # input j predicts ids[j]
        for start in range(0, len(ids), ctx):
            logp = torch.log_softmax(model(inputs[start:start + ctx][None])[0].float(), -1)
            out += (-(logp.exp() * logp).sum(-1)).tolist()
    return out


if __name__ == "__main__":
    sys.exit(main())
