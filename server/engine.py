"""The completion engine: document text and cursor in, completion strings out.

It knows nothing of LSP (server/lsp.py translates), so tests and benchmarks call it
directly. The prompt, generation and filters are completion/pipeline.py's, shared with the
evaluation; the engine adds what only a server needs: one KV cache kept across requests
(a prompt sharing a prefix with the previous one only computes its new tail), an LRU of
answers and typed-ahead reuse, cancellation, identifier re-ranking, and the stats of the
status request. Repository context (server/workspace.py) comes in as prompt tokens.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from completion.cache_lm import DocumentCounts, Lookup, Mixer, MixStats
from completion.pipeline import (
    LINE_BEAMS,
    Prepared,
    filter_texts,
    generate_candidates,
    memory_mixer,
    new_tokens,
    prepare,
)
from completion.postprocess import POST_CACHE, PRE_CACHE, CompletionContext
from completion.settings import EngineSettings, context_budget
from completion.syntax import COMMENT, STRING, cursor_region
from completion.words import inside_word
from model import native
from model.checkpoint import LoadedModel
from model.decode_step import compile_decoding
from model.device import dtype_name
from model.generate import (
    CANCELLED,
    DRAFT_PASS,
    STOP,
    Candidate,
    GenerationConfig,
    GenerationResult,
    beam_room,
    generate,
    walk_greedy,
)
from model.inference import MeasuredLinear, measure_again, product_forms
from model.kv_cache import KVCache, branch_room
from model.quantize import Int8Linear, int8_kernel, use_native
from model.scoring import Scored, blend, score_histories, word_end_mask
from server import identifiers
from server.interpreter import SERVER, Interpreter
from server.modules import ModuleNames, module_names_at


@dataclass
class Completion:
    text: str
    multiline: bool


LATENCY_WINDOW = 1000             # the status percentiles are over this many requests


@dataclass
class EngineStats:
    requests: int = 0
    cache_hits: int = 0            # answered from the LRU or by typed-ahead reuse
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    reused_tokens: int = 0
    prompt_tokens: int = 0
    context_tokens: int = 0        # repository context in the latest request's prompt
    last_prompt_tokens: int = 0    # the whole prompt of the latest generation


@dataclass
class RankedNames:
    """Names that may complete a partly typed one (CompletionEngine._names)."""

    partial: str               # the fragment before the cursor
    names: list[str]           # names[0] is the model's own pick when `greedy_ok`
    order: list[int]           # indices of `names`, best first
    conts: list[list[int]]     # each name's tokens after the prompt
    greedy_ok: bool

    def rests(self) -> list[str]:
        """What each name adds to the fragment, best first."""
        return [self.names[i][len(self.partial):] for i in self.order]


NAMES_LISTED = 5    # names a completion list offers after a partly typed name
# A completion list's prompt budget (ghost text's is the `context_tokens` setting). On 800
# held-out cursors of vs_jedi (seed 0, 80 files; AVX-512 AMD EPYC, bf16) a list was right
# as often with 384 prompt tokens as with 512 (0.530 and 0.531 in two runs, against 0.527)
# and 5 ms sooner at the median (31 against 36 ms, where jedi-language-server took 29-30);
# 256 was right 0.526 of the time, 2 ms sooner again. An earlier run on 400 cursors had
# found 384 a little worse (0.545 against 0.555): within these runs' noise (+-2.5 points).
# Lists keep their own KV cache (`_list_cache`): VS Code asks for ghost text and a list at
# every keystroke, and prompts of two budgets in one cache would each recompute the
# other's at every keystroke.
LIST_CONTEXT_TOKENS = 384
NAME_TOKENS = 8     # tokens the model may write for its own pick of that name

# Test seam: seconds to sleep per generated token, simulating a slow model so tests of
# cancellation and supersession are deterministic. Never set in normal use.
SLOW_TOKENS_ENV = "CODECOMPLETE_TEST_SLOW_TOKENS_S"

LRU_SIZE = 128
KEY_CHARS = 4096                   # how much of the prefix/suffix identifies a request


@dataclass
class Served:
    """The last answer, for typed-ahead reuse."""
    prefix: str
    suffix: str
    completions: list[Completion]


# Where imported modules are looked up: the user's folders and the workspace's interpreter.
ModuleSearch = tuple[tuple[str, ...], Interpreter]

class CompletionEngine:
    """Serialises generation on one model and owns the reusable KV cache."""

    def __init__(self, loaded: LoadedModel, settings: EngineSettings | None = None,
                 compile_decode: bool = False, keep_compiled: bool = False):
        """`compile_decode`: compile the one-token decode step after the warm-up
        (model/decode_step.py; `server --compile`); `keep_compiled` (`--compile on`, the
        user's explicit choice): use it even where it measures no faster than eager."""
        self.loaded = loaded
        self.compile_decode = compile_decode
        self.keep_compiled = keep_compiled
        # how tokens are decoded, for the status request (compile_step changes it)
        self.decode = "compile pending" if compile_decode else "eager"
        self.compile_error: str | None = None  # why compile_step could not build the step
        self.settings = settings or EngineSettings()
        self.stats = EngineStats()
        self._lock = threading.Lock()          # the model and its KV cache (held while
        #                                        generating)
        self._state = threading.Lock()         # the LRU, the last answer and the stats,
        #                                        changed by every request's worker thread
        self._cache: KVCache | None = None          # ghost text's prompt and tokens
        self._list_cache: KVCache | None = None     # completion lists' (see LIST_CONTEXT_TOKENS)
        self._lru: OrderedDict[tuple, list[Completion]] = OrderedDict()
        self._last: Served | None = None
        self.slow_tokens_s = float(os.environ.get(SLOW_TOKENS_ENV, "0") or 0)
        self.generating = 0               # generations in progress (for status displays)
        self._word_end = None             # tokens that can follow a name (lazy)
        self._document = DocumentCounts()  # the project memory's count of the document
        self.memory_stats = MixStats()

    def describe(self) -> dict[str, object]:
        with self._state:
            lat = sorted(self.stats.latencies_ms)
            stats = replace(self.stats, latencies_ms=deque())

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else None

        return {
            "model": str(self.loaded.path),
            "device": str(self.loaded.device),
            "dtype": dtype_name(self.loaded.dtype),
            "threads": torch.get_num_threads(),        # the model's (`--threads`)
            "parameters": self.loaded.config.num_parameters(),
            "requests": stats.requests,
            "latency_p50_ms": pct(0.5),
            "latency_p95_ms": pct(0.95),
            "kv_reuse_rate": round(stats.reused_tokens / stats.prompt_tokens, 3)
            if stats.prompt_tokens else None,
            "cache_hit_rate": round(stats.cache_hits / stats.requests, 3)
            if stats.requests else None,
            "generating": self.generating,
            "last_context_tokens": stats.context_tokens,
            "last_prompt_tokens": stats.last_prompt_tokens,
            "decode": self.decode,
            "int8_kernel": self.int8_kernel,
            "attention_kernel": self.attention_kernel,
            "float_products": self.float_products,
            "decode_steps_compiled": getattr(self.loaded.model.decode_step, "steps", 0),
            "memory": self.settings.memory,
            "memory_used_rate": round(self.memory_stats.matched / self.memory_stats.tokens, 3)
            if self.memory_stats.tokens else None,
        }

    def warmup(self) -> float:
        """Run a small generation so that the first real request does not pay for the
        one-time costs (kernel selection, allocator growth); returns its seconds. The
        server calls it in the background right after initialization, then
        `compile_step`."""
        t0 = time.perf_counter()
        tok = self.loaded.tokenizer
        text = "import os\n\n\ndef read(path):\n    with open(path) as f:\n        return f."
        with self._lock:
            ids, healed = self.build_prompt(text * 8, "")
            generate(self.loaded.model, tok, ids, GenerationConfig(max_new_tokens=4),
                     cache=self.loaded.model.new_cache(1, self.loaded.context), heal=healed)
        return time.perf_counter() - t0

    def native_kernel(self) -> str | None:
        """Build and load the native kernels where the model runs on a CPU and they are not
        loaded yet (model/native.py: ~25 s on 2 cores, once per machine; `--precompile`
        builds them too): one token's attention over the cache, for every model, the
        int8 products, to which the layers of a model with int8 weights are switched
        under the model lock, and the float products, among whose forms a float model's
        layers are measured again (model/inference.py) when the kernels were not loaded
        yet as the model was prepared. Runs before `compile_step`, so that the compiled
        step calls them. Returns why they are not in use, or None."""
        model = self.loaded.model
        if model.embed_tokens.weight.device.type != "cpu":
            return None                     # CUDA keeps PyTorch's kernels
        loaded_before = native.loaded()    # by prepare_for_inference, where built already
        why = native.load(build_if_missing=True)
        if why is None and any(isinstance(m, Int8Linear) and m.key is None
                               for m in model.modules()):
            with self._lock:
                use_native(model)
        if why is None and not loaded_before and any(isinstance(m, MeasuredLinear)
                                                     for m in model.modules()):
            with self._lock:                # float layers: the native product is a form
                measure_again(model)
        return why

    @property
    def attention_kernel(self) -> str:
        """What attends from a decoded token over the cache (for the status request)."""
        k = self.loaded.model.embed_tokens.weight
        if native.attends(torch.empty(0, self.loaded.config.head_dim, dtype=k.dtype,
                                      device=k.device)):
            return "native (model/native.py)"
        why = "on CUDA" if k.device.type != "cpu" else native.why_not() or "not available"
        return f"PyTorch ({why})"

    @property
    def float_products(self) -> str | None:
        """The float layers' product forms, counted (for the status request); None for
        int8 layers and on a GPU."""
        return product_forms(self.loaded.model)

    @property
    def int8_kernel(self) -> str | None:
        """Which kernel multiplies the model's int8 weights, read from its layers (for
        the status request); None without int8."""
        return int8_kernel(self.loaded.model)

    def compile_step(self) -> float | None:
        """Compile the decode step when `compile_decode` (seconds; None when not asked).
        Not under the model lock: requests meanwhile decode with the eager model, and
        those after it with the compiled step; `decode` says which, or why not."""
        if not self.compile_decode:
            return None
        self.decode = "compiling"
        t0 = time.perf_counter()
        # beam search's steps too, in the shape of a mid-line request's beams (LINE_BEAMS
        # rows with room for the most a request writes), and the checks of drafts
        room = branch_room(beam_room(new_tokens(self.settings, healed=True)))
        step = compile_decoding(self.loaded.model, self.loaded.context, LINE_BEAMS, room,
                                verify=DRAFT_PASS, keep_slower=self.keep_compiled)
        seconds = time.perf_counter() - t0
        self.decode = (f"compiled ({seconds:.1f} s, {step.wrapper} wrapper)" if step.ready
                       else f"eager: {step.failed}")
        # built but turned off for measuring no faster is not an error (its kernels are
        # cached all the same); not built at all is
        self.compile_error = None if step.compiled else step.failed
        return seconds

    def build_prompt(self, prefix: str, suffix: str, context: list[int] | None = None
                     ) -> tuple[list[int], bytes]:
        """The prompt ids and healed bytes this engine would send (completion/prompt.py)."""
        p = prepare(self.loaded, prefix, suffix, self.settings, context)
        return p.ids, p.healed

    def context_budget(self) -> int:
        """Tokens of repository context a request may carry under the current settings."""
        return context_budget(self.settings, self.loaded.context)

    def _key(self, prefix: str, suffix: str, context: list[int],
             memory: Lookup | None = None) -> tuple:
        """What identifies an answer: the text around the cursor, the context, every
        setting that changes what is generated, and the memory's counts."""
        s = self.settings
        counts = memory.version if memory is not None else None
        return (prefix[-KEY_CHARS:], suffix[:KEY_CHARS], tuple(context), s.temperature, s.top_p,
                s.max_tokens, s.candidates, s.context_tokens, s.seed, s.multiline, s.rerank,
                s.python, s.memory, s.memory_weight, counts)

    def typed_ahead(self, prefix: str, suffix: str) -> list[Completion] | None:
        """When the user typed exactly the start of the last suggestion, the rest of it."""
        last = self._last
        if last is None or suffix != last.suffix or not prefix.startswith(last.prefix):
            return None
        typed = prefix[len(last.prefix):]
        if not typed or ("\n" in typed and not any(c.multiline for c in last.completions)):
            return None
        rest = [Completion(c.text[len(typed):], c.multiline) for c in last.completions
                if c.text.startswith(typed) and len(c.text) > len(typed)]
        return rest or None

    def complete(self, prefix: str, suffix: str,
                 should_stop: Callable[[], bool] | None = None,
                 invoked: bool = True,
                 context: list[int] | None = None,
                 module_roots: tuple[str, ...] = (),
                 interpreter: Interpreter = SERVER,
                 memory: Lookup | None = None,
                 names: bool = False) -> list[Completion]:
        """Completions to insert at the cursor between `prefix` and `suffix`; with `names`
        (a completion list) after a partly typed name, the rests of the likeliest names
        instead of the rest of the line.

        `invoked` is False for completions the editor asks for by itself while the user
        types; those are not offered with the cursor inside a word (`foo|bar`), where
        ghost text would only get in the way, but an explicit request gets an answer.
        `context` is repository context for the prompt (server/workspace.py);
        `module_roots` the folders where the user's own modules are (the document's and the
        workspace's), and `interpreter` the workspace's Python, for the names of imported
        modules (server/modules.py); `memory` the project memory's counts of the
        workspace and other buffers (server/workspace.py), to which the engine adds the
        document's own."""
        s = self.settings
        if not s.enable or (not invoked and inside_word(prefix, suffix)):
            return []
        if not (s.comments and s.strings):
            region = cursor_region(prefix)
            if (region == COMMENT and not s.comments) or (region == STRING and not s.strings):
                return []
        started = time.perf_counter()
        context = context or []
        key = (names, *self._key(prefix, suffix, context, memory))
        with self._state:
            self.stats.requests += 1
            self.stats.context_tokens = len(context)
            cached = None if names else self.typed_ahead(prefix, suffix)
            if cached is None and key in self._lru:
                self._lru.move_to_end(key)
                cached = self._lru[key]
            if cached is not None:
                self.stats.cache_hits += 1
            else:
                self.generating += 1
        if cached is not None:
            raw = cached
        else:
            try:
                raw = self._generate(prefix, suffix, context, should_stop,
                                     (module_roots, interpreter), memory, names)
            finally:
                with self._state:
                    self.generating -= 1
            if raw is None:
                return []                      # cancelled: nothing cached, nothing shown
        with self._state:
            if cached is None:
                self._lru[key] = raw
                while len(self._lru) > LRU_SIZE:
                    self._lru.popitem(last=False)
            if not names:
                self._last = Served(prefix, suffix, raw)
        multiline = bool(raw) and raw[0].multiline        # one answer's candidates agree
        out = [Completion(text, multiline) for text in filter_texts(
            [c.text for c in raw], CompletionContext(prefix, suffix, multiline), POST_CACHE)]
        with self._state:
            self.stats.latencies_ms.append((time.perf_counter() - started) * 1000)
        return out

    def _choices(self, prefix: str, suffix: str, partial: str, modules: ModuleSearch
                 ) -> tuple[Counter[str], ModuleNames | None, list[str]]:
        """The document's uses of each name, the imported module's names where the cursor
        follows one (or None), and the names other than the model's own that may
        complete `partial` (server/identifiers.py)."""
        counts = identifiers.name_counts(prefix, suffix, partial)
        members = module_names_at(prefix[: len(prefix) - len(partial)], *modules)
        return counts, members, identifiers.candidates(counts, partial, members)

    def _conts(self, healed: bytes, partial: str, names: list[str]) -> list[list[int]]:
        """Each name's tokens after the prompt. The healed bytes end with (part of) the
        fragment and each name's rest follows them; a name that ends at the fragment has
        only the healed bytes (or nothing): then only the probability that a name ends
        right there is scored."""
        head = healed.decode("utf-8", errors="replace")
        return [self.loaded.tokenizer.encode(head + n[len(partial):]) for n in names]

    def _score(self, cache: KVCache, ids: list[int], conts: list[list[int]],
               mixer: Mixer | None, prompt_logits: torch.Tensor | None) -> Scored:
        """The names' scores by the model blended with the project memory (not counted in
        its stats: scoring given names is not writing tokens), from `cache` holding the
        prompt and the model's logits at its end."""
        if self._word_end is None:
            self._word_end = word_end_mask(self.loaded.tokenizer,
                                           self.loaded.model.config.vocab_size)
        return score_histories(self.loaded.model, ids, conts, cache, self._word_end,
                               functools.partial(mixer, count=False) if mixer else None,
                               prompt_logits)

    @staticmethod
    def _allowed(greedy: str, members: ModuleNames | None) -> bool:
        """Whether the model's pick may be offered: a name the imported module cannot
        have is no candidate."""
        return not (members and members.closed and greedy not in members.names)

    def _names(self, prefix: str, suffix: str, ids: list[int], healed: bytes,
               generated: GenerationResult, modules: ModuleSearch,
               mixer: Mixer | None) -> RankedNames | None:
        """The names that may complete a partly typed name, each scored by the model
        (blended with the project memory's `mixer`) and ranked, or None when there is no
        choice to make. `generated` is the greedy pass over the same prompt (its text is
        the model's pick; its logits at the prompt's end are scoring's first row). Runs
        under the model lock and leaves the KV cache holding the prompt."""
        partial = identifiers.partial_word(prefix)
        if not partial or inside_word(prefix, suffix):
            return None
        greedy = identifiers.greedy_name(partial, generated.text)
        counts, members, found = self._choices(prefix, suffix, partial, modules)
        greedy_ok = self._allowed(greedy, members)
        names = ([greedy] if greedy_ok else []) + [n for n in found if n != greedy]
        if len(names) < (2 if greedy_ok else 1):
            return None                                  # no choice to make
        conts = self._conts(healed, partial, names)
        if len(names) == 1:                              # one name instead of the pick
            return RankedNames(partial, names, [0], conts, greedy_ok)
        scores = self._score(self._cache, ids, conts, mixer, generated.prompt_logits).scores
        order = identifiers.ranked(names, scores, [len(c) for c in conts], prefix, partial,
                                   counts, greedy_first=greedy_ok)
        return RankedNames(partial, names, order, conts, greedy_ok)

    def _listed(self, prefix: str, suffix: str, p: Prepared, prompt: GenerationResult,
                cache: KVCache, modules: ModuleSearch, mixer: Mixer | None,
                should_stop: Callable[[], bool] | None) -> list[str] | None:
        """What a completion list offers after a partly typed name: the rests of the
        likeliest names, best first; None when cancelled. `prompt` is generation's pass
        over the prompt alone (`p`, which stops at the name's end), which `cache` holds.

        The model's own pick is read from the other names' scoring where it can be:
        when greedy decoding's first choice (from the prompt's logits) starts one of
        them, they are scored first, and greedy decoding that follows a scored name has
        every choice computed there already (model/generate.walk_greedy); it decodes only
        where it leaves them, led by the tokens it chose. On vs_jedi's 200 held-out
        cursors half of the picks are read whole; the others' first choice leaves the
        names at once, and they are decoded and then scored with the names, as before."""
        partial = identifiers.partial_word(prefix)
        counts, members, found = self._choices(prefix, suffix, partial, modules)
        tok, model = self.loaded.tokenizer, self.loaded.model
        blended = functools.partial(mixer, count=False) if mixer else None
        conts = self._conts(p.healed, partial, found)
        max_new = min(p.config.max_new_tokens, cache.capacity - len(p.ids))
        opening = blend(prompt.prompt_logits[None].float(), [[]], blended)[0]
        pick, lead = walk_greedy(lambda ids: None if ids else opening, tok, p.config,
                                 p.healed, max_new, p.stop_text)     # the first choice
        scored = None
        if pick is None and any(c[:1] == lead for c in conts):
            scored = self._score(cache, p.ids, conts, mixer, prompt.prompt_logits)
            pick, lead = walk_greedy(scored.after, tok, p.config, p.healed, max_new,
                                     p.stop_text)
        if pick is None:
            pick = generate(model, tok, p.ids, p.config, cache=cache, heal=p.healed,
                            should_stop=should_stop, stop_text=p.stop_text, mixer=mixer,
                            lead=lead, prompt_logits=prompt.prompt_logits).candidates[0]
            if pick.finish_reason == CANCELLED:
                return None
        greedy = identifiers.greedy_name(partial, pick.text)
        greedy_ok = self._allowed(greedy, members)
        names = ([greedy] if greedy_ok else []) + [n for n in found if n != greedy]
        if not names or names == [partial]:
            return []
        tokens = dict(zip(found, conts, strict=True))          # the pick's may be new
        picked = [n for n in names if n not in tokens]
        tokens.update(zip(picked, self._conts(p.healed, partial, picked), strict=True))
        conts = [tokens[n] for n in names]
        known = dict(zip(found, scored.scores, strict=True)) if scored else {}
        missing = [i for i, n in enumerate(names) if n not in known]
        if len(names) > 1 and missing:          # the model's own pick, or all of them
            got = self._score(cache, p.ids, [conts[i] for i in missing], mixer,
                              prompt.prompt_logits).scores
            known.update(zip([names[i] for i in missing], got, strict=True))
        scores = [known.get(n, 0.0) for n in names]
        order = identifiers.ranked(names, scores, [len(c) for c in conts], prefix, partial,
                                   counts, greedy_first=greedy_ok)
        return RankedNames(partial, names, order, conts, greedy_ok).rests()

    def _rerank(self, prefix: str, suffix: str, ids: list[int], healed: bytes,
                generated: GenerationResult, should_stop: Callable[[], bool] | None,
                modules: ModuleSearch = ((), SERVER),
                mixer: Mixer | None = None) -> str | None:
        """A better single-line completion when the cursor follows a partly typed name
        (`_names`): None keeps the greedy text; CANCELLED when stopped. With the project memory's
        `mixer`, the rest of the line after the chosen name is written with the blend, as
        every other token is."""
        found = self._names(prefix, suffix, ids, healed, generated, modules, mixer)
        if found is None:
            return None
        best, conts = found.order[0], found.conts
        if best == 0 and found.greedy_ok:
            return None
        s = self.settings
        rest = generate(self.loaded.model, self.loaded.tokenizer, ids + conts[best],
                        GenerationConfig(
            max_new_tokens=max(1, s.max_tokens - len(conts[best])),
            temperature=s.temperature, top_p=s.top_p, seed=s.seed, stop=("\n",)),
            cache=self._cache, should_stop=should_stop,
            mixer=mixer.after(conts[best]) if mixer else None).candidates[0]
        if rest.finish_reason == CANCELLED:
            return CANCELLED
        return found.rests()[0] + rest.text

    def _generate(self, prefix: str, suffix: str, context: list[int],
                  should_stop: Callable[[], bool] | None,
                  modules: ModuleSearch = ((), SERVER),
                  memory: Lookup | None = None,
                  names: bool = False) -> list[Completion] | None:
        """Model output after the pre-cache filters, or None when cancelled: the shared
        steps of completion/pipeline.py under the model lock, re-ranking a partly typed
        name on a single line, then the stats. With `names` after a partly typed name,
        the model writes only to the name's end (no beams) and the ranked names are the
        answer: the line's rest costs a completion list nothing."""
        should_stop = self._slowed(should_stop)
        listing = names and bool(identifiers.partial_word(prefix)) \
            and not inside_word(prefix, suffix)
        with self._lock:
            if should_stop is not None and should_stop():
                return None
            if listing:
                p = prepare(self.loaded, prefix, suffix, replace(
                    self.settings, context_tokens=min(self.settings.context_tokens,
                                                      LIST_CONTEXT_TOKENS)), context)
                p = replace(p, stop_text=identifiers.name_end, config=replace(
                    p.config, n=1, beams=1,
                    max_new_tokens=min(p.config.max_new_tokens, NAME_TOKENS)))
                if self._list_cache is None:
                    self._list_cache = self.loaded.model.new_cache(1, self.loaded.context)
            else:
                p = prepare(self.loaded, prefix, suffix, self.settings, context)
                if self._cache is None:
                    self._cache = self.loaded.model.new_cache(1, self.loaded.context)
            mixer = memory_mixer(self.loaded, p, self._document, memory, self.settings,
                                 self.memory_stats)
            if listing:
                result = generate(self.loaded.model, self.loaded.tokenizer, p.ids,
                                  replace(p.config, max_new_tokens=0),
                                  cache=self._list_cache, heal=p.healed)   # the prompt alone
                rests = self._listed(prefix, suffix, p, result, self._list_cache, modules,
                                     mixer, should_stop)
                if rests is None:
                    return None
                result.candidates = [Candidate(rest, [], STOP)
                                     for rest in rests[:NAMES_LISTED]]
            else:
                result = generate_candidates(self.loaded, p, self._cache, should_stop, mixer)
                if any(c.finish_reason == CANCELLED for c in result.candidates):
                    return None
                if self.settings.rerank and not p.ctx.multiline:
                    better = self._rerank(prefix, suffix, p.ids, p.healed, result,
                                          should_stop, modules, mixer)
                    if better is CANCELLED:
                        return None
                    if better is not None:
                        result.candidates[0].text = better
        with self._state:
            self.stats.prompt_tokens += result.prompt_tokens
            self.stats.reused_tokens += result.reused_tokens
            self.stats.last_prompt_tokens = result.prompt_tokens
        texts = filter_texts([c.text for c in result.candidates], p.ctx, PRE_CACHE)
        return [Completion(text, p.ctx.multiline) for text in texts]

    def _slowed(self, should_stop: Callable[[], bool] | None
                ) -> Callable[[], bool] | None:
        """The test seam SLOW_TOKENS_ENV: a stop check that sleeps, so each token is slow."""
        if not self.slow_tokens_s:
            return should_stop

        def slow() -> bool:
            time.sleep(self.slow_tokens_s)
            return should_stop() if should_stop else False
        return slow
