"""Fill-in-the-middle training examples, made on the fly per document.

Spans are cut at random *character* positions (not token positions), so the model learns
to start and end a middle anywhere, including inside a word. The layout itself comes from
`model.tokenizer.fim_layout`, the same function the server uses for its prompts.
"""

from __future__ import annotations

import random

from model.tokenizer import PSM, SPM, Tokenizer, fim_layout


def document_tokens(tok: Tokenizer, text: str, rng: random.Random, fim_rate: float = 0.5,
                    spm_rate: float = 0.5) -> list[int]:
    """One training document as token ids ending in <|endoftext|>: with probability
    fim_rate a FIM example (SPM with probability spm_rate, else PSM), else left-to-right."""
    if len(text) < 2 or rng.random() >= fim_rate:
        return [*tok.encode(text), tok.eot_id]
    a, b = sorted(rng.randrange(len(text) + 1) for _ in range(2))
    prefix, middle, suffix = text[:a], text[a:b], text[b:]
    order = SPM if rng.random() < spm_rate else PSM
    return [*fim_layout(tok, tok.encode(prefix), tok.encode(suffix), order, tok.encode(middle)),
            tok.eot_id]


def reassemble(tok: Tokenizer, ids: list[int]) -> str:
    """The original document back from `document_tokens` output, whatever its layout.
    Lets tests (and anyone debugging data) check that no byte was lost or moved."""
    body = ids[:-1] if ids and ids[-1] == tok.eot_id else ids
    if not body or body[0] != tok.fim_prefix_id:
        return tok.decode(body)
    m = body.index(tok.fim_middle_id)
    if body[1] == tok.fim_suffix_id:  # SPM: <pre><suf> suffix <mid> prefix middle
        return tok.decode(body[m + 1:]) + tok.decode(body[2:m])
    s = body.index(tok.fim_suffix_id)  # PSM: <pre> prefix <suf> suffix <mid> middle
    return tok.decode(body[1:s]) + tok.decode(body[m + 1:]) + tok.decode(body[s + 1:m])
