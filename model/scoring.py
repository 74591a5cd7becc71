"""Scoring given continuations of a prompt: log P(continuation | prompt) for several at once.

Used to rank identifier candidates (names already in the document, builtins) against the
model's own greedy guess when the cursor sits after a partly typed name: the model's
probability of the whole name, followed by something that ends a name, is a better
ranking than per-token greedy choices for a small model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass
class Scored:
    """Scores of continuations, and the (blended) distribution after every history the
    scoring computed: the prompt itself, each continuation's proper prefixes, and (with
    an end mask) each whole continuation."""

    scores: list[float]
    logp: torch.Tensor                        # [histories, V] log-probabilities
    row_of: dict[tuple[int, ...], int]        # history (ids after the prompt) -> row

    def after(self, history: Sequence[int]) -> torch.Tensor | None:
        """The log-probabilities [V] of the next token after `history`, None where the
        scoring did not compute them."""
        row = self.row_of.get(tuple(history))
        return None if row is None else self.logp[row]


def blend(logits: torch.Tensor, histories: list[list[int]], mixer: Mixer | None
          ) -> torch.Tensor:
    """Log-probabilities [B, V] of the next token from the model's `logits` [B, V] after
    each history (ids after the prompt), blended by `mixer` where there is one."""
    return mixer(logits, histories) if mixer is not None else torch.log_softmax(logits, -1)


def score_continuations(model: Transformer, prompt_ids: list[int],
                        continuations: list[list[int]], cache: KVCache,
                        end_mask: torch.Tensor | None = None,
                        mixer: Mixer | None = None,
                        prompt_logits: torch.Tensor | None = None) -> list[float]:
    """Sum of log-probabilities of each continuation (see `score_histories`)."""
    return score_histories(model, prompt_ids, continuations, cache, end_mask, mixer,
                           prompt_logits).scores


@torch.inference_mode()
def score_histories(model: Transformer, prompt_ids: list[int],
                    continuations: list[list[int]], cache: KVCache,
                    end_mask: torch.Tensor | None = None,
                    mixer: Mixer | None = None,
                    prompt_logits: torch.Tensor | None = None) -> Scored:
    """Sum of log-probabilities of each continuation's tokens after the prompt, plus (with
    `end_mask`) the log-probability that the next token is one of the masked ones.

    `cache` (batch 1) is reused for the prompt's shared prefix and ends holding the prompt;
    the continuations run as one batch branching from it (kv_cache.BranchCache). With a
    `mixer` (project memory, model/generate.Mixer) every probability is the blend's, as
    generation would see it, each position given the continuation's ids before it.
    `prompt_logits`: the model's logits at the prompt's last position when the caller has
    them (generation's GenerationResult.prompt_logits, with `cache` still holding the
    prompt): that position is then not computed again.

    A distribution is computed (and blended) once per distinct history: every
    continuation's first token is scored from the same one, and names sharing their first
    tokens share the next ones. Those distributions are kept (`Scored.after`): greedy
    decoding can read its choices from them while it follows a continuation
    (model/generate.walk_greedy)."""
    if not continuations:
        raise ValueError("no continuations to score")
    device = model.embed_tokens.weight.device
    n = len(prompt_ids)
    if prompt_logits is not None and cache.tokens[:n] == prompt_ids:
        cache.truncate(n)
        first = prompt_logits.float()
    else:
        reused = cache.reuse(prompt_ids)
        tail = torch.tensor([prompt_ids[reused:]], device=device)
        first = model(tail, cache, last_only=True)[0, -1].float()
    width = max(1, max(len(c) for c in continuations))   # an empty one scores only the end
    batch = torch.zeros(len(continuations), width, dtype=torch.long, device=device)
    for r, c in enumerate(continuations):
        batch[r, :len(c)] = torch.tensor(c, device=device)
    work = cache.branch(len(continuations), width)
    hidden = model.features(batch, work)                         # [K, width, hidden]
    # One row per distinct history: before token j of a continuation (row 0, the prompt's
    # last position, for j = 0), and after its last token where the end is scored.
    row_of: dict[tuple[int, ...], int] = {(): 0}
    history: list[list[int]] = [[]]
    taken: list[int] = []                      # rows 1.. as indices into `hidden`'s positions
    picks: list[tuple[int, int, int]] = []     # (continuation, row, token) scored
    ends: list[tuple[int, int]] = []           # (continuation, row) whose end is scored
    for r, c in enumerate(continuations):
        for j in range(len(c) + (end_mask is not None)):
            h = tuple(c[:j])
            if h not in row_of:
                row_of[h] = len(history)
                history.append(c[:j])
                taken.append(r * width + j - 1)
            if j < len(c):
                picks.append((r, row_of[h], c[j]))
            else:
                ends.append((r, row_of[h]))
    # logits only where a history is new (the batch's padding and repeats are not)
    logits = torch.cat([first[None],
                        model.lm_head(hidden.reshape(-1, hidden.shape[-1])[taken]).float()])
    logp = blend(logits, history, mixer)
    token_lp = logp[[i for _, i, _ in picks], [t for _, _, t in picks]].tolist() \
        if picks else []
    end_lp = torch.logsumexp(logp[[i for _, i in ends]][:, end_mask.to(device)], -1).tolist() \
        if ends else []
    scores = [0.0] * len(continuations)
    for (r, _, _), lp in zip(picks, token_lp, strict=True):
        scores[r] += lp
    for (r, _), lp in zip(ends, end_lp, strict=True):
        scores[r] += lp
    return Scored(scores, logp, row_of)
