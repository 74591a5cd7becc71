"""From a document's prefix and suffix to filtered completion texts: the steps the server
takes for every request, as plain functions that `training.evaluate` and the benchmarks
call too.

    prepare -> generate_candidates -> filter_texts(PRE_CACHE) -> filter_texts(POST_CACHE)

The server runs the first three under its model lock (adding KV-cache reuse,
cancellation and identifier re-ranking), caches the result, and runs the post-cache
filters on each answer; `complete` runs them all at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from completion.cache_lm import DocumentCounts, Lookup, Mixer, MixStats
from completion.postprocess import POST_CACHE, PRE_CACHE, CompletionContext, Filter, run_chain
from completion.postprocess.block_scope import block_end
from completion.prompt import build_prompt, clean_text, prompt_budget, wants_multiline
from completion.settings import EngineSettings
from model.checkpoint import LoadedModel
from model.generate import (
    CANCELLED,
    GenerationConfig,
    GenerationResult,
    generate,
    tokens_opening_with,
)
from model.kv_cache import KVCache
from model.tokenizer import Tokenizer

SHOWN: list[Filter] = PRE_CACHE + POST_CACHE     # every filter, as an answer is shown
# Beams for the rest of a line being typed, when decoding is greedy: the most probable
# rest beats greedy's one path (held-out line exact match 0.191 -> 0.238 over 1,000
# cases; in a first experiment 3 beams gained less than 4, and 8 no more). On a blank
# line beams do worse (FIM single-line 0.052 -> 0.048, edit similarity 0.299 -> 0.268:
# the likeliest line is a short one), and a block body is many lines, so both stay
# greedy. docs/default-model.md has the numbers.
LINE_BEAMS = 4
LEFT_CHARS = 400   # the text before the cursor whose last tokens are the memory's context


@dataclass
class Prepared:
    """One request, ready to generate: the prompt and how to generate and filter."""

    ids: list[int]                 # the FIM prompt
    healed: bytes                  # the cursor's partial token, which generation re-grows
    ctx: CompletionContext         # prefix, suffix and single- vs multi-line
    config: GenerationConfig
    stop_text: Callable[[str], int | None] | None   # the block's end, when multi-line


def prepare(lm: LoadedModel, prefix: str, suffix: str, settings: EngineSettings,
            context: list[int] | None = None) -> Prepared:
    """The prompt and generation settings for a cursor between `prefix` and `suffix`:
    multi-line on an empty line opening a block body, else the rest of one line. On a
    blank line the user asks for a line, so generation may not end it before writing
    something: the model, trained on middles that may be empty, often would (on held-out
    single-line FIM cases, mostly at column 0 after a blank line, re-growing the healed
    line break into another one).
    `context` is repository context (completion/prompt.context_ids), put first; the FIM
    prompt gets what it leaves of the model's context. The rest of a line being typed is
    found by beam search when decoding is greedy (LINE_BEAMS)."""
    multiline = wants_multiline(prefix, suffix, settings.multiline)
    ctx = CompletionContext(prefix, suffix, multiline)
    context = context or []
    budget = prompt_budget(lm.context - len(context), settings.context_tokens,
                           settings.max_tokens)
    ids, healed = build_prompt(lm.tokenizer, lm.meta.fim_order, prefix, suffix, budget, context)
    # The healed token re-types what is already there (the cursor's partial token): it is
    # not one of the suggestion's tokens (max_tokens 1 after `f.` gave `."""`'s rest).
    config = GenerationConfig(max_new_tokens=new_tokens(settings, bool(healed)),
                              temperature=settings.temperature, top_p=settings.top_p,
                              n=settings.candidates, seed=settings.seed,
                              stop=() if multiline else ("\n",),
                              write_line=ctx.on_blank_line,
                              beams=line_beams(ctx, settings))
    # The filter's own rule (block_scope): at column 0 the block ends at the next line
    # that starts at column 0, so generation stops there too rather than at max_tokens.
    return Prepared(ids, healed, ctx, config,
                    block_end(max(1, ctx.indent)) if multiline else None)


def new_tokens(settings: EngineSettings, healed: bool) -> int:
    """Tokens a request may generate: `max_tokens`, and the healed token that re-types the
    cursor's partial token first."""
    return settings.max_tokens + (1 if healed else 0)


def line_beams(ctx: CompletionContext, settings: EngineSettings) -> int:
    """How many beams to search with: LINE_BEAMS for one greedy answer that finishes a
    line with text on it, else 1 (plain greedy decoding or sampling)."""
    if settings.temperature == 0 and settings.candidates == 1 and not ctx.multiline \
            and not ctx.on_blank_line:
        return LINE_BEAMS
    return 1


def generate_candidates(lm: LoadedModel, p: Prepared, cache: KVCache | None = None,
                        should_stop: Callable[[], bool] | None = None,
                        mixer: Mixer | None = None) -> GenerationResult:
    """Generate for a prepared request. A block body that is a docstring the filters
    would drop whole (cut off before its first line ended) is generated once more with
    string-opening first tokens banned: a new function gets code rather than nothing.
    `mixer` (project memory, `memory_mixer`) blends the user's code into every token."""
    result = generate(lm.model, lm.tokenizer, p.ids, p.config, cache=cache, heal=p.healed,
                      should_stop=should_stop, stop_text=p.stop_text, mixer=mixer)
    first = result.candidates[0]
    if p.ctx.multiline and p.config.n == 1 and first.finish_reason != CANCELLED \
            and first.text.lstrip().startswith(('"""', "'''")) \
            and run_chain(first.text, p.ctx, PRE_CACHE) is None:
        result = generate(lm.model, lm.tokenizer, p.ids,
                          replace(p.config, ban_first=quote_tokens(lm.tokenizer)),
                          cache=cache, heal=p.healed, should_stop=should_stop,
                          stop_text=p.stop_text, mixer=mixer)
    return result


def memory_mixer(lm: LoadedModel, p: Prepared, document: DocumentCounts | None,
                 workspace: Lookup | None, settings: EngineSettings,
                 stats: MixStats | None = None) -> Mixer | None:
    """The project memory for one request (completion/cache_lm.py): the workspace's counts
    and the document's own (both sides of the cursor), most local last; None when the
    setting is off or nothing is counted."""
    if not settings.memory:
        return None
    prefix, suffix = p.ctx.prefix, p.ctx.suffix
    levels = [lv for lv in (workspace, document.counts(lm.tokenizer, prefix, suffix)
                            if document is not None else None) if lv is not None]
    head = clean_text(prefix[-LEFT_CHARS:]).encode("utf-8")
    head = head[:len(head) - len(p.healed)] if p.healed else head
    left = lm.tokenizer.encode(head.decode("utf-8", errors="ignore"))
    mixer = Mixer(levels, left, weight=settings.memory_weight, stats=stats)
    return mixer if mixer else None


def quote_tokens(tok: Tokenizer) -> tuple[int, ...]:
    """Tokens that begin (after spaces) with a quote: what a docstring starts with."""
    return tokens_opening_with(tok, (b'"', b"'"))


def filter_texts(texts: list[str], ctx: CompletionContext, chain: list[Filter]) -> list[str]:
    """Each text through the filter chain; dropped ones and repeats left out."""
    out: list[str] = []
    for text in texts:
        kept = run_chain(text, ctx, chain)
        if kept is not None and kept not in out:
            out.append(kept)
    return out


def generated(lm: LoadedModel, prefix: str, suffix: str, settings: EngineSettings,
              cache: KVCache | None = None) -> tuple[list[str], CompletionContext]:
    """The model's texts for a cursor before any filter, and what the filters know; the
    document is its own project memory when the setting is on (no workspace here)."""
    p = prepare(lm, prefix, suffix, settings)
    mixer = memory_mixer(lm, p, DocumentCounts(), None, settings)
    result = generate_candidates(lm, p, cache or lm.model.new_cache(1, lm.context),
                                 mixer=mixer)
    return [c.text for c in result.candidates if c.finish_reason != CANCELLED], p.ctx


def complete(lm: LoadedModel, prefix: str, suffix: str, settings: EngineSettings,
             cache: KVCache | None = None) -> list[str]:
    """Completions as the server would show them, without its caches and re-ranking."""
    texts, ctx = generated(lm, prefix, suffix, settings, cache)
    return filter_texts(texts, ctx, SHOWN)
