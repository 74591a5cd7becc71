"""Which tokens of a training window are prose: comment text and the inside of
triple-quoted strings (docstrings), for a training loss that weighs code more than prose
(`--prose-weight`).

Why: the small model spends much of its capacity on English it then invents in the
editor (sampled function bodies were mostly made-up docstrings). Down-weighting prose
targets leaves the code's loss the larger share of the gradient. What stays code: the
`#` and the quotes themselves (the model still has to learn when a comment or a
docstring opens and closes), one-quote strings (dictionary keys, format strings and
short messages sit inside code lines), file headers and the FIM sentinels.

A window is scanned with `completion.syntax.pieces`, the scanner the server uses, in the
text's original order: a FIM example's prefix, middle and suffix are put back in reading
order first, so a docstring split by a middle is still a docstring. A window cut from
the middle of a file may start inside a comment or a string: the loader carries the state
at the end of each row's previous window (`end_state`) into the next one.
"""

from __future__ import annotations

import codecs

import numpy as np

from completion.syntax import pieces
from model.tokenizer import Tokenizer
from training.fim import window_pieces

CODE = ""                         # the states a window can start in: code,
COMMENT = "#"                     # inside a comment,
STATES = (CODE, COMMENT, "'", '"', "'''", '"""')   # or inside a string opened so


def prose_flags(tok: Tokenizer, ids: list[int], state: str = CODE) -> tuple[list[bool], str]:
    """For a run of tokens in reading order: whether each one starts inside comment text
    or inside a triple-quoted string, and the state at the run's end. `state` is where
    the run starts (STATES); special tokens (no bytes) are never prose."""
    if state not in STATES:
        raise ValueError(f"prose state {state!r} is not one of {STATES}.")
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    starts, chunks, length = [], [], len(state)
    special = []
    for t in ids:
        starts.append(length)
        raw = tok.token_bytes(t)
        special.append(not raw)
        chunk = decoder.decode(raw)
        chunks.append(chunk)
        length += len(chunk)
    text = state + "".join(chunks) + decoder.decode(b"", final=True)
    prose = np.zeros(len(text) + 1, dtype=bool)
    end = CODE
    for kind, start, inner, stop in pieces(text):
        if kind == "comment":
            prose[start + 1:stop] = True
            end = COMMENT if stop == len(text) else CODE
        elif kind in ("string", "open string"):
            quote = text[start:start + 3] if text[start:start + 3] in ("'''", '"""') \
                else text[start]
            if len(quote) == 3:
                prose[start + 3:inner] = True
            end = quote if kind == "open string" else CODE
        else:
            end = CODE
    flags = [bool(prose[s]) and not sp for s, sp in zip(starts, special, strict=True)]
    return flags, end


def reading_order(tok: Tokenizer, piece: list[int]) -> list[int]:
    """Indices of `piece` (one document's part of a window, as training.fim cuts it) in
    the order its text reads: a FIM example's header, prefix, middle, suffix; anything
    else as it is."""
    index = list(range(len(piece)))
    if tok.fim_prefix_id not in piece or tok.fim_middle_id not in piece:
        return index
    p = piece.index(tok.fim_prefix_id)
    m = piece.index(tok.fim_middle_id, p)
    if p + 1 < len(piece) and piece[p + 1] == tok.fim_suffix_id:      # SPM
        return index[:p + 2] + index[m:] + index[p + 2:m]
    if tok.fim_suffix_id not in piece[p:m]:
        return index
    s = piece.index(tok.fim_suffix_id, p)                                # PSM
    return index[:s] + index[m:] + index[s:m]


def row_prose(tok: Tokenizer, row: list[int], state: str = CODE) -> np.ndarray:
    """The prose mask of one training row (bool, one per token). Its first document part
    starts in `state` (where the previous window of the stream ended), the others in code."""
    mask = np.zeros(len(row), dtype=bool)
    at = 0
    for n, piece in enumerate(window_pieces(tok, row)):
        order = reading_order(tok, piece)
        flags, _ = prose_flags(tok, [piece[i] for i in order], state if n == 0 else CODE)
        for i, flag in zip(order, flags, strict=True):
            mask[at + i] = flag
        at += len(piece)
    return mask


def end_state(tok: Tokenizer, window: list[int], state: str = CODE) -> str:
    """Where the stream stands after `window` (left to right, before FIM), which starts in
    `state`: the state its next window starts in. A document that ended closes all."""
    parts = window_pieces(tok, window)
    if not parts or parts[-1][-1] == tok.eot_id:
        return CODE
    return prose_flags(tok, parts[-1], state if len(parts) == 1 else CODE)[1]
