"""The FIM prompt: the document around the cursor in a token budget, cut at line boundaries,
with the token at the cursor healed (model/healing.py)."""

from __future__ import annotations

from completion.postprocess.context import CompletionContext
from model.healing import heal_tail
from model.tokenizer import Tokenizer, fim_layout

CHARS_PER_TOKEN_MAX = 16   # pre-trim by characters so a huge document costs O(budget)
FIM_OVERHEAD = 4           # the FIM sentinels, and one token of slack


def clean_text(text: str) -> str:
    """Text safe to tokenize: lone surrogates (possible in JSON strings) become U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def cut_prefix(tok: Tokenizer, text: str, budget: int) -> list[int]:
    """Token ids of the end of `text` within `budget` tokens, cut at a line start."""
    if len(text) > budget * CHARS_PER_TOKEN_MAX:
        text = text[-budget * CHARS_PER_TOKEN_MAX:]
        text = text[text.find("\n") + 1:] if "\n" in text else text
    text = clean_text(text)
    ids = tok.encode(text)
    if len(ids) <= budget:
        return ids
    skip = sum(len(tok.token_bytes(i)) for i in ids[: len(ids) - budget])
    data = text.encode("utf-8")
    nl = data.find(b"\n", skip)
    rest = data[nl + 1:] if nl != -1 else data[skip:]
    return tok.encode(rest.decode("utf-8", errors="ignore"))[-budget:]


def cut_suffix(tok: Tokenizer, text: str, budget: int) -> list[int]:
    """Token ids of the start of `text` within `budget` tokens, cut at a line end."""
    if len(text) > budget * CHARS_PER_TOKEN_MAX:
        text = text[:budget * CHARS_PER_TOKEN_MAX]
        text = text[:text.rfind("\n") + 1] if "\n" in text else text
    text = clean_text(text)
    ids = tok.encode(text)
    if len(ids) <= budget:
        return ids
    keep = sum(len(tok.token_bytes(i)) for i in ids[:budget])
    data = text.encode("utf-8")
    nl = data.rfind(b"\n", 0, keep)
    head = data[: nl + 1] if nl != -1 else data[:keep]
    return tok.encode(head.decode("utf-8", errors="ignore"))[:budget]


def wants_multiline(prefix: str, suffix: str, mode: str = "auto") -> bool:
    """Whether a completion may run over several lines (the `multiline` setting):
    auto: when the cursor sits on an empty line opening a block body; never: no;
    always: whenever nothing but blanks follows the cursor on its line."""
    ctx = CompletionContext(prefix, suffix, multiline=False)
    if mode == "never" or ctx.rest_of_line.strip():
        return False
    if mode == "always":
        return True
    current = ctx.current_line
    if current.strip():
        return False
    previous = prefix[: len(prefix) - len(current)].rstrip("\n").rsplit("\n", 1)[-1]
    return previous.rstrip().endswith(":")


def prompt_budget(model_context: int, context_tokens: int, max_tokens: int) -> int:
    """Prompt tokens (sentinels aside) for a request: the setting, within what the model's
    context leaves after the tokens to generate."""
    return max(1, min(context_tokens, model_context - max_tokens - FIM_OVERHEAD))


def build_prompt(tok: Tokenizer, fim_order: str, prefix: str, suffix: str, budget: int,
                 snippet: str = "") -> tuple[list[int], bytes]:
    """FIM prompt ids and the healed bytes. The suffix gets up to a quarter of the
    budget, a snippet from another document up to a quarter, the prefix the rest."""
    suffix_budget = budget // 4 if suffix.strip() else 0
    snippet_ids = cut_suffix(tok, snippet, budget // 4) if snippet else []
    prefix_ids = snippet_ids + cut_prefix(tok, prefix, budget - suffix_budget - len(snippet_ids))
    suffix_ids = cut_suffix(tok, suffix, suffix_budget) if suffix_budget else []
    prefix_ids, healed = heal_tail(tok, prefix_ids)
    return fim_layout(tok, prefix_ids, suffix_ids, fim_order), healed
