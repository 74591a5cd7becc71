"""Scoring given continuations of a prompt: log P(continuation | prompt) for several at once.

Used to rank identifier candidates (names already in the document, builtins) against the
model's own greedy guess when the cursor sits after a partly typed name: the model's
probability of the whole name, followed by something that ends a name, is a better
ranking than per-token greedy choices for a small model.
"""

from __future__ import annotations

import torch

from model.generate import Mixer
from model.kv_cache import KVCache
from model.tokenizer import Tokenizer
from model.transformer import Transformer


def word_end_mask(tok: Tokenizer, vocab: int) -> torch.Tensor:
    """True for tokens that can follow a complete identifier: those not starting with a
    letter, digit or underscore (special tokens included)."""
    mask = torch.ones(vocab, dtype=torch.bool)
    for i in range(min(vocab, tok.vocab_size)):
        b = tok.token_bytes(i)
        if b and (chr(b[0]).isalnum() or b[0] == ord("_") or b[0] >= 0x80):
            mask[i] = False
    return mask


@torch.inference_mode()
def score_continuations(model: Transformer, prompt_ids: list[int],
                        continuations: list[list[int]], cache: KVCache,
                        end_mask: torch.Tensor | None = None,
                        mixer: Mixer | None = None) -> list[float]:
    """Sum of log-probabilities of each continuation's tokens after the prompt, plus (with
    `end_mask`) the log-probability that the next token is one of the masked ones.

    `cache` (batch 1) is reused for the prompt's shared prefix and ends holding the prompt;
    the continuations run as one batch branching from it (kv_cache.BranchCache). With a
    `mixer` (project memory, model/generate.Mixer) every probability is the blend's, as
    generation would see it, each position given the continuation's ids before it."""
    if not continuations:
        raise ValueError("no continuations to score")
    device = model.embed_tokens.weight.device
    reused = cache.reuse(prompt_ids)
    tail = torch.tensor([prompt_ids[reused:]], device=device)
    first = model(tail, cache, last_only=True)[0, -1]
    width = max(1, max(len(c) for c in continuations))   # an empty one scores only the end
    batch = torch.zeros(len(continuations), width, dtype=torch.long, device=device)
    for r, c in enumerate(continuations):
        batch[r, :len(c)] = torch.tensor(c, device=device)
    work = cache.branch(len(continuations), width)
    out = model(batch, work)                                     # [K, width, vocab]
    # One row per scored position: before token j of a continuation (j = 0 is the
    # prompt's last position), and after its last token where the end is scored.
    rows, history, owner = [], [], []
    for r, c in enumerate(continuations):
        for j in range(len(c) + (end_mask is not None)):
            rows.append(first if j == 0 else out[r, j - 1])
            history.append(c[:j])
            owner.append(r)
    logits = torch.stack(rows)
    logp = (mixer(logits, history) if mixer is not None
            else torch.log_softmax(logits.float(), -1))
    scores = [0.0] * len(continuations)
    ends = end_mask.to(device) if end_mask is not None else None
    for i, (r, h) in enumerate(zip(owner, history, strict=True)):
        c = continuations[r]
        if len(h) < len(c):
            scores[r] += logp[i, c[len(h)]].item()
        else:
            scores[r] += torch.logsumexp(logp[i][ends], 0).item()
    return scores
