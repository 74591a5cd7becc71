"""The FIM prompt: the document around the cursor in a token budget, cut at line boundaries,
with the token at the cursor healed (model/healing.py)."""

from __future__ import annotations

from completion.postprocess.context import CompletionContext
from model.healing import heal_tail
from model.tokenizer import Tokenizer, fim_layout

CHARS_PER_TOKEN_MAX = 16   # pre-trim by characters so a huge document costs O(budget)
CHARS_PER_TOKEN_GUESS = 6  # ... first tried with this (Python is ~4 characters a token)
MARGIN = 32                # tokens beyond the budget that make the first try enough
FIM_OVERHEAD = 4           # the FIM sentinels, and one token of slack


def clean_text(text: str) -> str:
    """Text safe to tokenize: lone surrogates (possible in JSON strings) become U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def cut_prefix(tok: Tokenizer, text: str, budget: int) -> list[int]:
    """Token ids of the end of `text` within `budget` tokens, cut at a line start.

    Tokenizing costs most of a prompt, so a long text is first tried in a window of
    CHARS_PER_TOKEN_GUESS characters a token, from a line start: when that holds MARGIN
    tokens more than the budget, the last `budget` tokens (all that the cut looks at) are
    those of the whole text, and so is the result (equal on 5,400 held-out prefixes and
    budgets; 1.6 -> 1.0 ms a prompt). Otherwise the window is the worst case's."""
    if len(text) > budget * CHARS_PER_TOKEN_GUESS:
        window = text[-budget * CHARS_PER_TOKEN_GUESS:]
        if "\n" in window:
            window = clean_text(window[window.find("\n") + 1:])
            ids = tok.encode(window)
            if len(ids) >= budget + MARGIN:
                return _cut_at_line_start(tok, window, ids, budget)
    if len(text) > budget * CHARS_PER_TOKEN_MAX:
        text = text[-budget * CHARS_PER_TOKEN_MAX:]
        text = text[text.find("\n") + 1:] if "\n" in text else text
    text = clean_text(text)
    ids = tok.encode(text)
    if len(ids) <= budget:
        return ids
    return _cut_at_line_start(tok, text, ids, budget)


def _cut_at_line_start(tok: Tokenizer, text: str, ids: list[int], budget: int) -> list[int]:
    """`text`'s tokens (`ids`, more than `budget`) from the first line start at or after
    the budget's first token, tokenized anew from there."""
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
    if not ctx.on_blank_line:
        return False
    current = ctx.current_line
    previous = prefix[: len(prefix) - len(current)].rstrip("\n").rsplit("\n", 1)[-1]
    return previous.rstrip().endswith(":")


def prompt_budget(model_context: int, context_tokens: int, max_tokens: int) -> int:
    """Prompt tokens (sentinels aside) for a request: the setting, within what the model's
    context leaves after the tokens to generate."""
    return max(1, min(context_tokens, model_context - max_tokens - FIM_OVERHEAD))


def header_ids(tok: Tokenizer, path: str) -> list[int]:
    """The line that opens a file in a repository prompt: `<file_sep>path` where the model
    has a file separator (ours, StarCoder2, Qwen2.5-Coder), else a `# path` comment."""
    if tok.file_sep_id is not None:
        return [tok.file_sep_id, *tok.encode(path + "\n")]
    return tok.encode(f"# {path}\n")


def context_ids(tok: Tokenizer, chunks: list[tuple[str, str]], path: str, budget: int
                ) -> list[int]:
    """Repository context for the prompt from (path, text) chunks, best first: as many
    whole chunks as fit in `budget` tokens, taken best first and laid out best *last*
    (nearest the code they help), each under its file header, then the header of the
    document being completed (`path`). Empty when no chunk fits."""
    picked: list[list[int]] = []
    used = 0
    for chunk_path, text in chunks:
        ids = header_ids(tok, chunk_path) + tok.encode(clean_text(text.rstrip("\n") + "\n"))
        if used + len(ids) <= budget:
            picked.append(ids)
            used += len(ids)
    if not picked:
        return []
    return [t for ids in reversed(picked) for t in ids] + header_ids(tok, path)


def assemble(tok: Tokenizer, fim_order: str, context: list[int], prefix_ids: list[int],
             suffix_ids: list[int], middle_ids: list[int] | None = None) -> list[int]:
    """The whole prompt: repository context first (after a BOS token, where the model has
    one), then the FIM layout. Context first keeps the prompt's start stable while the user
    types, so the KV cache is reused. Training builds its examples with this too."""
    fim = fim_layout(tok, prefix_ids, suffix_ids, fim_order, middle_ids)
    if not context:
        return fim
    if tok.bos_id is not None and fim[:1] == [tok.bos_id]:
        return [tok.bos_id, *context, *fim[1:]]
    return [*context, *fim]


def split_budget(budget: int, suffix: str) -> tuple[int, int]:
    """(prefix, suffix) token budgets: the suffix gets up to a quarter when it has code."""
    suffix_budget = budget // 4 if suffix.strip() else 0
    return budget - suffix_budget, suffix_budget


def build_prompt(tok: Tokenizer, fim_order: str, prefix: str, suffix: str, budget: int,
                 context: list[int] | None = None) -> tuple[list[int], bytes]:
    """Prompt ids and the healed bytes: `context` (from context_ids) first, then the FIM
    prompt in `budget` tokens, a quarter at most for the suffix, the prefix the rest."""
    prefix_budget, suffix_budget = split_budget(budget, suffix)
    prefix_ids = cut_prefix(tok, prefix, prefix_budget)
    suffix_ids = cut_suffix(tok, suffix, suffix_budget) if suffix_budget else []
    prefix_ids, healed = heal_tail(tok, prefix_ids)
    return assemble(tok, fim_order, context or [], prefix_ids, suffix_ids), healed
