"""Fill-in-the-middle training examples, made on the fly: per document, or per piece of a
packed training window (`context_fim`, what the presets use).

Where a middle is cut (`spans`):
- "char": two random *character* positions (not token positions), so the model learns to
  start and end a middle anywhere, including inside a word;
- "line": what editors ask for (`pick_middle`): a cursor anywhere on a line after its
  indentation, and the middle runs to the end of that line, or to just before the line's
  closing brackets (the editor auto-closed them), or over a few more lines;
- "mix": each example one of the two, with even odds.
The layout itself comes from `model.tokenizer.fim_layout`, the same function the server
uses for its prompts.
"""

from __future__ import annotations

import random

from model.tokenizer import PSM, SPM, Tokenizer, fim_layout

SPANS = ("char", "line", "mix")
MULTILINE_RATE = 0.3          # share of line middles that run over 2-5 lines
CLOSED_RATE = 0.25            # share of line middles that stop before the line's closers
CLOSERS = ")]}:,'\""
FIM_EXTRA = 4                 # tokens a FIM example adds: three sentinels and the end


def pick_middle(text: str, rng: random.Random) -> tuple[int, int] | None:
    """A cursor on a random non-blank line, after its indentation, and the middle's end:
    the end of that line; with CLOSED_RATE just before the run of closing brackets, quotes
    and colons that ends the line (when the cursor is before it); with MULTILINE_RATE the
    end of one of the next 4 lines. None for text without a non-blank line."""
    lines = text.split("\n")
    candidates = [i for i, line in enumerate(lines) if line.strip()]
    if not candidates:
        return None
    row = rng.choice(candidates)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    line = lines[row]
    indent = len(line) - len(line.lstrip())
    a = starts[row] + rng.randrange(indent, len(line))
    kind = rng.random()
    if kind < MULTILINE_RATE:
        last = min(len(lines) - 1, row + rng.randint(1, 4))
        return a, starts[last] + len(lines[last])
    end = starts[row] + len(line)
    if kind < MULTILINE_RATE + CLOSED_RATE:
        closed = starts[row] + len(line.rstrip().rstrip(CLOSERS).rstrip())
        if text[a:closed].strip():
            return a, closed
    return a, end


def choose_middle(text: str, rng: random.Random, spans: str = "char") -> tuple[int, int]:
    """The middle's [start, end) in `text` for a FIM example, by the `spans` rule above."""
    if spans not in SPANS:
        raise ValueError(f"fim_spans {spans!r} is not one of {', '.join(SPANS)}.")
    if spans == "line" or (spans == "mix" and rng.random() < 0.5):
        span = pick_middle(text, rng)
        if span is not None:
            return span
    a, b = sorted(rng.randrange(len(text) + 1) for _ in range(2))
    return a, b


def document_tokens(tok: Tokenizer, text: str, rng: random.Random, fim_rate: float = 0.5,
                    spm_rate: float = 0.5, spans: str = "char") -> list[int]:
    """One training document as token ids ending in <|endoftext|>: with probability
    fim_rate a FIM example (SPM with probability spm_rate, else PSM), else left-to-right."""
    if len(text) < 2 or rng.random() >= fim_rate:
        return [*tok.encode(text), tok.eot_id]
    a, b = choose_middle(text, rng, spans)
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


def context_fim(tok: Tokenizer, ids: list[int], rng: random.Random, fim_rate: float = 0.5,
                spm_rate: float = 0.5, spans: str = "char", ends: bool = True) -> list[int]:
    """FIM inside one packed training window (context-level FIM), same length out as in.

    The window is split after each <|endoftext|> and before each <file_sep> (repository
    packing); a piece's file header stays as it is, and each piece's code becomes a FIM example with
    probability fim_rate. Why not per document: with a 512-token context and Python files
    of 2,300 tokens at the median, a document-level example almost never has its sentinels,
    suffix and middle in one window, so the model cannot learn to fill a middle from a
    suffix. Here every example lies in its window, as a server prompt does; a piece whose
    <fim_middle> would not fit stays left to right; a window that came out shorter
    (re-tokenising at the cuts rarely merges tokens) is padded with <fim_pad>.

    With `ends` (the default) every example ends with <|endoftext|> inside the window, as
    the server expects a middle to end: a piece the window cut (or a file inside a packed
    repository) still gets it, and the piece that runs to the window's end is made 4 tokens
    shorter first so that the sentinels and the end fit (and should re-tokenising still
    overflow, the suffix's tail gives way). Without it (how the fifth and sixth sittings
    were trained) only a piece that ended with <|endoftext|> kept it and the window cut the
    rest: counted on 64 windows of 1024 tokens, 7 of 43 examples had an end, so the model
    hardly ever saw where a middle stops.
    """
    out: list[int] = []
    for piece in window_pieces(tok, ids):
        closed = bool(piece) and piece[-1] == tok.eot_id
        head = _header_length(tok, piece)
        out.extend(piece[:head])
        piece = piece[head:]
        body = piece[:-1] if closed else piece
        room = len(ids) - len(out)
        if ends and len(body) + FIM_EXTRA > room:
            body = body[:max(room - FIM_EXTRA, 0)]   # the sentinels and the end must fit
        if len(body) < 2 or rng.random() >= fim_rate:
            out.extend(piece)
            continue
        example = document_tokens(tok, tok.decode(body), rng, fim_rate=1.0, spm_rate=spm_rate,
                                  spans=spans)
        if not closed and not ends:
            example = example[:-1]
        if ends and len(out) + len(example) > len(ids):
            example = _shorten_suffix(tok, example, len(out) + len(example) - len(ids))
        if len(out) + example.index(tok.fim_middle_id) >= len(ids):
            example = piece         # its middle would not fit: keep it left to right
        out.extend(example)
    pad = tok.eot_id if tok.fim_pad_id is None else tok.fim_pad_id
    out = out[:len(ids)]
    return out + [pad] * (len(ids) - len(out))


def _shorten_suffix(tok: Tokenizer, example: list[int], excess: int) -> list[int]:
    """`example` (ending with <|endoftext|>) made `excess` tokens shorter without moving
    its middle's end: the tail of its suffix (just before <fim_middle> in both orders)
    goes first; once the suffix is empty the middle runs to the end of the text, so the
    text may end sooner and the rest comes off the middle's tail. When that would leave no
    middle, only the suffix is cut and the window cuts the end, as without `ends`."""
    m = example.index(tok.fim_middle_id)
    cut = min(excess, m - example.index(tok.fim_suffix_id) - 1)
    example = example[:m - cut] + example[m:]
    rest = excess - cut
    if rest == 0:
        return example
    if len(example) - 1 - rest <= m - cut + 1:
        return example
    return example[:len(example) - 1 - rest] + example[-1:]


def window_pieces(tok: Tokenizer, ids: list[int]) -> list[list[int]]:
    """The window cut after each <|endoftext|> and before each <file_sep>."""
    pieces, start = [], 0
    for i, t in enumerate(ids):
        if t == tok.file_sep_id and i > start:
            pieces.append(ids[start:i])
            start = i
        if t == tok.eot_id:
            pieces.append(ids[start:i + 1])
            start = i + 1
    if start < len(ids):
        pieces.append(ids[start:])
    return pieces


def _header_length(tok: Tokenizer, piece: list[int]) -> int:
    """Tokens of the `<file_sep>path` header line that opens `piece` (0 if none): up to the
    token that holds its newline (headers are tokenized on their own, so one token ends
    it). A header cut off by the window's end is all header."""
    if not piece or tok.file_sep_id is None or piece[0] != tok.file_sep_id:
        return 0
    for i in range(1, len(piece)):
        if b"\n" in tok.token_bytes(piece[i]):
            return i + 1
    return len(piece)
