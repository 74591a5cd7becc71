"""Scoring given continuations of a prompt: log P(continuation | prompt) for several at once.

Used to rank identifier candidates (names already in the document, builtins) against the
model's own greedy guess when the cursor sits after a partly typed name: the model's
probability of the whole name, followed by something that ends a name, is a better
ranking than per-token greedy choices for a small model.
"""

from __future__ import annotations

import torch

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
                        end_mask: torch.Tensor | None = None) -> list[float]:
    """Sum of log-probabilities of each continuation's tokens after the prompt, plus (with
    `end_mask`) the log-probability that the next token is one of the masked ones.

    `cache` (batch 1) is reused for the prompt's shared prefix and ends holding the prompt;
    the continuations run as one batch branching from it (kv_cache.BranchCache)."""
    if not continuations:
        raise ValueError("no continuations to score")
    device = model.embed_tokens.weight.device
    reused = cache.reuse(prompt_ids)
    tail = torch.tensor([prompt_ids[reused:]], device=device)
    first = torch.log_softmax(model(tail, cache, last_only=True)[0, -1].float(), -1)
    width = max(1, max(len(c) for c in continuations))   # an empty one scores only the end
    batch = torch.zeros(len(continuations), width, dtype=torch.long, device=device)
    for r, c in enumerate(continuations):
        batch[r, :len(c)] = torch.tensor(c, device=device)
    work = cache.branch(len(continuations), width)
    logp = torch.log_softmax(model(batch, work).float(), -1)     # [K, width, vocab]
    scores = []
    for r, c in enumerate(continuations):
        s = first[c[0]].item() if c else 0.0
        for j in range(1, len(c)):
            s += logp[r, j - 1, c[j]].item()
        if end_mask is not None:
            after = logp[r, len(c) - 1] if c else first
            s += torch.logsumexp(after[end_mask.to(device)], 0).item()
        scores.append(s)
    return scores
