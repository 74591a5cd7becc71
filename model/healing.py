"""Token healing: let a BPE model continue text that ends in the middle of a token.

A prompt ending in `self.va` tokenizes as [..., "va"], but in training `value` was always
one token, so after "va" the model has never seen "lue". Healing backs off the trailing
tokens that could be the start of a longer token, and constrains the first generated tokens
to reproduce the removed bytes: the model is then free to pick "value" itself.
"""

from __future__ import annotations

from model.tokenizer import Tokenizer

INDENT_TOKENS = 32      # enough tokens to hold a line's indentation, one space per token


def heal_tail(tok: Tokenizer, ids: list[int], max_tokens: int = 3) -> tuple[list[int], bytes]:
    """Split `ids` into (kept ids, removed bytes).

    Backs off the largest k ≤ max_tokens trailing tokens whose joint bytes are a proper
    prefix of some vocabulary token — only then can a different tokenization exist.
    Returns (ids, b"") when nothing needs healing.

    A text ending in a blank line's indentation ("...:\n    ") is never healed: that
    indentation is exactly what the writer wants, and backing off the newline + indent
    token would let the model pick a deeper one ("\n" + 8 spaces after a top-level def).
    """
    # SentencePiece-style vocabularies keep the newline apart from the indentation, which
    # may even be several tokens: look at the end of the text, not only at the last token.
    if _ends_in_indentation(b"".join(tok.token_bytes(i) for i in ids[-INDENT_TOKENS:])):
        return list(ids), b""
    best = 0
    tail = b""
    for k in range(1, min(max_tokens, len(ids)) + 1):
        piece = tok.token_bytes(ids[-k])
        if not piece:  # special token: never back off across it
            break
        tail = piece + tail
        if _has_longer_token(tok, tail):
            best = k
    if best == 0:
        return list(ids), b""
    removed = b"".join(tok.token_bytes(i) for i in ids[-best:])
    return list(ids[:-best]), removed


def _ends_in_indentation(tail: bytes) -> bool:
    """A newline followed only by (at least one) space or tab."""
    nl = tail.rfind(b"\n")
    return nl != -1 and nl + 1 < len(tail) and not tail[nl + 1:].strip(b" \t")


def _has_longer_token(tok: Tokenizer, prefix: bytes) -> bool:
    return any(len(tok.token_bytes(i)) > len(prefix) for i in tok.tokens_starting_with(prefix))


def allowed_tokens(tok: Tokenizer, remaining: bytes) -> list[int]:
    """Tokens consistent with generating `remaining` next: those that start with all of it,
    and those that are a (non-empty) prefix of it."""
    allowed = tok.tokens_starting_with(remaining)
    for n in range(1, len(remaining)):
        i = tok.token_for_bytes(remaining[:n])
        if i is not None:
            allowed.append(i)
    return allowed
