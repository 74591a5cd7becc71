"""Autoregressive generation with a KV cache, n candidates, stop strings, cancellation and
token healing, by sampling, greedy decoding or beam search. The server and the evaluator
both call `generate`.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from model.healing import allowed_tokens
from model.kv_cache import KVCache
from model.sampling import sample_next
from model.tokenizer import Tokenizer
from model.transformer import Transformer

# A blend of the model's distribution with others (completion/cache_lm.Mixer): logits
# [B, V] and each row's generated ids (None: finished) -> log-probabilities [B, V].
Mixer = Callable[[torch.Tensor, list[list[int] | None]], torch.Tensor]

STOP = "stop"          # end-of-text / special token / stop string / stop_text callback
LENGTH = "length"      # max_new_tokens or the context window reached
CANCELLED = "cancelled"


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0       # 0 → greedy
    top_k: int = 0                 # 0 → off
    top_p: float = 1.0             # 1 → off
    n: int = 1                     # candidates sampled from one shared prompt
    seed: int | None = None
    stop: tuple[str, ...] = ()     # stop strings; the text is cut before them
    ignore_eos: bool = False       # never end on a special token (benchmarks)
    ban_first: tuple[int, ...] = ()  # token ids the first generated token may not be
    write_line: bool = False       # write something before any line break or end of text
    beams: int = 1                 # >1: beam search for the most probable text (greedy, n 1)
    drafts: bool = True            # greedy, one candidate, a mixer that drafts: verify its
    #                                drafts several tokens per forward pass (same output)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0 or self.n < 1 or not 0 < self.top_p <= 1 \
                or self.temperature < 0 or self.top_k < 0 or self.beams < 1:
            raise ValueError(f"invalid generation settings: {self}")
        if self.beams > 1 and (self.temperature > 0 or self.n > 1):
            raise ValueError(f"beam search is greedy and finds one text: {self}")


@dataclass
class Candidate:
    text: str
    token_ids: list[int]
    finish_reason: str


@dataclass
class GenerationResult:
    candidates: list[Candidate]
    prompt_tokens: int
    reused_tokens: int
    prefill_seconds: float
    decode_seconds: float
    new_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    # The model's own logits [V] (float) at the prompt's last position, before the memory
    # or any mask: scoring continuations of the same prompt starts from them
    # (model/scoring.py) instead of computing that position again.
    prompt_logits: torch.Tensor | None = None

    @property
    def text(self) -> str:
        return self.candidates[0].text


class _Row:
    """Per-candidate decoding state: healing constraint, text so far, stop handling."""

    def __init__(self, heal: bytes):
        self.heal_left = heal
        self.skip = len(heal)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.ids: list[int] = []
        self.reason: str | None = None

    def fork(self) -> _Row:
        """An independent copy, for a beam that branches."""
        new = _Row.__new__(_Row)
        new.heal_left, new.skip, new.text, new.reason = \
            self.heal_left, self.skip, self.text, self.reason
        new.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        new.decoder.setstate(self.decoder.getstate())
        new.ids = list(self.ids)
        return new

    def add(self, token_id: int, data: bytes) -> None:
        self.ids.append(token_id)
        if self.heal_left:
            n = min(len(self.heal_left), len(data))
            self.heal_left = self.heal_left[n:] if data.startswith(self.heal_left[:n]) else b""
        if self.skip:
            n = min(self.skip, len(data))
            data, self.skip = data[n:], self.skip - n
        self.text += self.decoder.decode(data)


@torch.inference_mode()
def generate(model: Transformer, tok: Tokenizer, prompt_ids: list[int],
             config: GenerationConfig | None = None, *, cache: KVCache | None = None,
             heal: bytes = b"", should_stop: Callable[[], bool] | None = None,
             stop_text: Callable[[str], int | None] | None = None,
             mixer: Mixer | None = None, lead: Sequence[int] = (),
             prompt_logits: torch.Tensor | None = None) -> GenerationResult:
    """Continue `prompt_ids`.

    cache:       a batch-1 KVCache to reuse (longest shared prefix) and extend; with n == 1
                 it ends holding the prompt and the generated tokens.
    heal:        bytes removed from the prompt by token healing; the output must start with
                 them, and they are stripped from the returned text.
    should_stop: polled between tokens; True ends all candidates as "cancelled".
    stop_text:   given a candidate's text, returns an index to cut it at (and stop), or None.
    mixer:       turns each step's logits [B, V] and the rows' generated ids (None for a
                 finished row) into the log-probabilities to decode from (the project
                 memory, completion/cache_lm.py); the bans and healing apply after it.
    lead:        the tokens greedy decoding (n 1, no beams) is expected to write first
                 (`walk_greedy`'s): they are drafts, checked in one forward pass and kept
                 only where greedy decoding chooses them, so the text is greedy's own.
    prompt_logits: the model's logits [V] at the prompt's end from an earlier pass
                 (GenerationResult.prompt_logits), used when `cache` holds the prompt: the
                 last position is not computed again.
    """
    cfg = config or GenerationConfig()
    if cache is None:
        cache = model.new_cache(1)
    ctx = cache.capacity                 # the model's context, or less for a smaller cache
    if not prompt_ids:
        raise ValueError("the prompt is empty; generation needs at least one token.")
    if len(prompt_ids) >= ctx:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit the context of {ctx}")
    max_new = min(cfg.max_new_tokens, ctx - len(prompt_ids))
    device = model.embed_tokens.weight.device
    if cache.batch != 1:
        raise ValueError("generate() needs a batch-1 cache to reuse")
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)

    t0 = time.perf_counter()
    if prompt_logits is not None and cache.tokens[:len(prompt_ids)] == prompt_ids:
        reused = len(prompt_ids)
        cache.truncate(reused)
        logits = prompt_logits[None].float().clone()
    else:
        reused = cache.reuse(prompt_ids)
        tail = torch.tensor([prompt_ids[reused:]], device=device)
        logits = model(tail, cache, last_only=True)[:, -1].float()
    first = logits[0].clone()            # the steps below change `logits` in place
    t1 = time.perf_counter()
    if cfg.beams > 1:
        rows, new_tokens = _beam_search(model, tok, cfg, cache, logits, heal, max_new,
                                        should_stop, stop_text, mixer)
        return _result(rows, prompt_ids, reused, t0, t1, new_tokens, first)

    draft = getattr(mixer, "draft", None)
    if lead:
        draft = _leading(list(lead), draft)
    if draft is not None and cfg.drafts and cfg.n == 1 and cfg.temperature == 0:
        row, new_tokens, passes = _drafted_greedy(model, tok, cfg, cache, logits, heal, max_new,
                                                  should_stop, stop_text, mixer, draft)
        result = _result([row], prompt_ids, reused, t0, t1, new_tokens, first)
        result.timings["forward_passes"] = passes
        return result
    work = cache if cfg.n == 1 else cache.branch(cfg.n, max_new)
    logits = logits.expand(cfg.n, -1).clone()
    rows = [_Row(heal) for _ in range(cfg.n)]
    new_tokens = 0
    for step in range(max_new):
        if should_stop is not None and should_stop():
            for r in rows:
                r.reason = r.reason or CANCELLED
            break
        if mixer is not None:
            logits = mixer(logits, [r.ids if r.reason is None else None for r in rows])
        _constrain(logits, rows, tok, cfg, step)
        next_ids = sample_next(logits, cfg.temperature, cfg.top_k, cfg.top_p, generator)
        next_list = next_ids.tolist()
        for r, t in zip(rows, next_list, strict=True):
            if r.reason is not None:
                continue
            if t in tok.special_ids:
                r.reason = STOP
                continue
            r.add(t, tok.token_bytes(t))
            new_tokens += 1
            _apply_stops(r, cfg.stop, stop_text)
        if all(r.reason is not None for r in rows) or step == max_new - 1:
            break
        logits = model(next_ids[:, None], work)[:, -1].float()
    return _result(rows, prompt_ids, reused, t0, t1, new_tokens, first)


MAX_DRAFT = 8    # tokens of a draft verified in one forward pass
DRAFT_PASS = MAX_DRAFT + 1   # ... after the token chosen before it: a pass's width


def beam_room(max_new: int) -> int:
    """Positions each beam's branch of the cache holds for a search of `max_new` tokens:
    every token written, and the last one's step."""
    return max_new + 1


Draft = Callable[[list[int], int], list[int]]   # generated ids, room -> expected next ids


def _leading(lead: list[int], then: Draft | None) -> Draft:
    """Drafts that follow `lead` while the generated ids agree with it, then `then`'s."""
    def draft(generated: list[int], n: int) -> list[int]:
        k = len(generated)
        if k < len(lead) and generated == lead[:k]:
            return lead[k:k + n]
        return then(generated, n) if then is not None else []
    return draft


def walk_greedy(after: Callable[[list[int]], torch.Tensor | None], tok: Tokenizer,
                cfg: GenerationConfig, heal: bytes, max_new: int,
                stop_text: Callable[[str], int | None] | None = None
                ) -> tuple[Candidate | None, list[int]]:
    """Greedy decoding read from distributions computed beforehand: `after(ids)` gives
    the (blended) log-probabilities after the generated `ids`, or None where none was
    computed (a scoring pass's, model/scoring.Scored.after). The same choices, bans,
    healing and stops as `generate`'s greedy decoding, without a forward pass. Returns the
    finished candidate, or None and the tokens chosen until a history had no distribution
    (`generate`'s `lead` then continues from them)."""
    row = _Row(heal)
    for step in range(max_new):
        logp = after(row.ids)
        if logp is None:
            return None, row.ids
        logits = logp[None].float().clone()
        _constrain(logits, [row], tok, cfg, step)
        t = int(logits[0].argmax())
        if t in tok.special_ids:
            row.reason = STOP
            break
        row.add(t, tok.token_bytes(t))
        _apply_stops(row, cfg.stop, stop_text)
        if row.reason is not None:
            break
    return Candidate(row.text, row.ids, row.reason or LENGTH), row.ids


def _drafted_greedy(model: Transformer, tok: Tokenizer, cfg: GenerationConfig, cache: KVCache,
                    logits: torch.Tensor, heal: bytes, max_new: int,
                    should_stop: Callable[[], bool] | None,
                    stop_text: Callable[[str], int | None] | None, mixer: Mixer | None,
                    draft: Draft) -> tuple[_Row, int, int]:
    """Greedy decoding that checks a draft of the next tokens (the project memory's
    likeliest continuation, or `generate`'s `lead`) in one forward pass: each drafted
    token is kept while it is what greedy decoding would choose there (the same blend, bans
    and healing, token by token), and the first other choice is taken from the same pass.
    So the text is greedy's own, in fewer passes where the user's code repeats. Returns the
    row, its tokens and the forward passes made."""
    row = _Row(heal)
    step = passes = 0
    chosen = None                   # greedy's choice where the last draft went wrong
    while step < max_new:
        if should_stop is not None and should_stop():
            row.reason = CANCELLED
            break
        t = chosen if chosen is not None else _greedy_pick(logits, row, tok, cfg, step, mixer)
        if t in tok.special_ids:
            row.reason = STOP
            break
        row.add(t, tok.token_bytes(t))
        _apply_stops(row, cfg.stop, stop_text)
        step += 1
        if row.reason is not None or step >= max_new:
            break
        room = min(MAX_DRAFT, max_new - step, cache.capacity - cache.length - 1)
        guess = [d for d in draft(row.ids, room) if d not in tok.special_ids] if room else []
        base = cache.length
        out = model(torch.tensor([[t, *guess]], device=logits.device), cache)[0].float()
        passes += 1
        kept, chosen = 0, None
        for j, d in enumerate(guess):
            pick = _greedy_pick(out[j:j + 1], row, tok, cfg, step, mixer)
            if pick != d:
                chosen = pick       # the same row and step: not blended a second time
                break
            row.add(d, tok.token_bytes(d))
            _apply_stops(row, cfg.stop, stop_text)
            step += 1
            kept = j + 1
            if row.reason is not None or step >= max_new:
                break
        if row.reason is not None or step >= max_new:
            break
        cache.truncate(base + 1 + kept)
        logits = out[kept:kept + 1]
    return row, len(row.ids), passes


def _greedy_pick(logits: torch.Tensor, row: _Row, tok: Tokenizer, cfg: GenerationConfig,
                 step: int, mixer: Mixer | None) -> int:
    """Greedy decoding's choice for one row: the blend, then the bans and healing."""
    mixed = mixer(logits, [row.ids]) if mixer is not None else logits.float().clone()
    _constrain(mixed, [row], tok, cfg, step)
    return int(mixed[0].argmax())


def _result(rows: list[_Row], prompt_ids: list[int], reused: int, t0: float, t1: float,
            new_tokens: int, prompt_logits: torch.Tensor) -> GenerationResult:
    candidates = []
    for r in rows:
        if r.reason is None:
            r.reason = LENGTH
        candidates.append(Candidate(r.text, r.ids, r.reason))
    return GenerationResult(candidates, len(prompt_ids), reused, t1 - t0,
                            time.perf_counter() - t1, new_tokens, prompt_logits=prompt_logits)


def _constrain(logits: torch.Tensor, rows: list[_Row], tok: Tokenizer, cfg: GenerationConfig,
               step: int) -> None:
    """Mask, in place, what each row may not write next: ids past the vocabulary, special
    tokens when `ignore_eos`, tokens that do not re-grow the healed bytes, the banned
    first tokens, and line enders while a `write_line` row has written nothing."""
    logits[:, tok.vocab_size:] = float("-inf")
    if cfg.ignore_eos:
        logits[:, sorted(tok.special_ids)] = float("-inf")
    for b, r in enumerate(rows):
        if r.heal_left and r.reason is None:
            allowed = allowed_tokens(tok, r.heal_left)
            if allowed:
                keep = torch.full_like(logits[b], float("-inf"))
                idx = torch.tensor(allowed, device=logits.device)
                keep[idx] = logits[b, idx]
                logits[b] = keep
    bans = [list(cfg.ban_first) if step == 0 else [] for _ in rows]
    if cfg.write_line:
        for b, r in enumerate(rows):
            if r.reason is None and not r.text.strip():
                bans[b] += _line_enders(tok, r)
    for b, ban in enumerate(bans):
        if ban:
            banned = logits[b].clone()
            banned[ban] = float("-inf")
            if torch.isfinite(banned).any():   # never leave a row without a token
                logits[b] = banned


SPARE_OPTIONS = 64    # tokens looked at per beam beyond its width: when the likeliest all
#                      end the text (a line break, end of text), live beams still grow


def _beam_search(model: Transformer, tok: Tokenizer, cfg: GenerationConfig, cache: KVCache,
                 logits: torch.Tensor, heal: bytes, max_new: int,
                 should_stop: Callable[[], bool] | None,
                 stop_text: Callable[[str], int | None] | None,
                 mixer: Mixer | None = None) -> tuple[list[_Row], int]:
    """The most probable text (sum of token log-probabilities, ended by a special token,
    a stop or the length limit) among `cfg.beams` beams: greedy decoding keeps one path
    and misses a line whose first token is not the single most likely one. Returns the
    winning row and the number of its tokens.

    A text that writes nothing (blanks at most) wins only when no beam wrote anything:
    the request asked for the rest of a line, and an empty answer shows nothing. A
    finished text is final once no live beam scores higher (scores only fall as tokens
    are added). The beams decode as one batch branching from `cache` (which keeps just
    the prompt, stored once for all beams: kv_cache.BranchCache); beams that die are
    replaced by copies of the best so the batch keeps its shape, and never chosen."""
    width = cfg.beams
    work = cache.branch(width, beam_room(max_new))
    beams = [(0.0, _Row(heal))]                  # (score, row), best first
    finished: list[tuple[float, _Row]] = []
    for step in range(max_new):
        if should_stop is not None and should_stop():
            best = beams[0][1]
            best.reason = CANCELLED
            return [best], len(best.ids)
        rows = [r for _, r in beams]
        if mixer is not None:
            logits = mixer(logits[:len(rows)], [r.ids for r in rows])
        logp = torch.log_softmax(logits[:len(rows)], dim=-1)
        masked = logits[:len(rows)].clone()
        _constrain(masked, rows, tok, cfg, step)
        logp = logp.masked_fill(~torch.isfinite(masked), float("-inf"))
        options = []
        for b, (score, _) in enumerate(beams):
            top = torch.topk(logp[b], min(width + SPARE_OPTIONS, logp.shape[1]))
            options += [(score + v, b, t) for v, t in zip(top.values.tolist(),
                                                          top.indices.tolist(), strict=True)
                        if v != float("-inf")]
        options.sort(key=lambda o: -o[0])
        grown: list[tuple[float, _Row, int, int]] = []    # score, row, parent, token
        for score, b, t in options:
            if len(grown) == width:
                break
            row = beams[b][1].fork()
            if t in tok.special_ids:
                row.reason = STOP
                finished.append((score, row))
                continue
            row.add(t, tok.token_bytes(t))
            _apply_stops(row, cfg.stop, stop_text)
            if row.reason is not None:
                finished.append((score, row))
            else:
                grown.append((score, row, b, t))
        best_done = max((f[0] for f in finished if f[1].text.strip()), default=float("-inf"))
        if not grown or best_done >= grown[0][0] or step == max_new - 1:
            finished += [(score, row) for score, row, _, _ in grown]
            break
        parents = [g[2] for g in grown] + [grown[0][2]] * (width - len(grown))
        ids = [g[3] for g in grown] + [grown[0][3]] * (width - len(grown))
        work.reorder(parents)
        beams = [(score, row) for score, row, _, _ in grown]
        logits = model(torch.tensor(ids, device=logits.device)[:, None], work)[:, -1].float()
    best = max(finished, key=lambda f: (bool(f[1].text.strip()), f[0]))[1] if finished \
        else beams[0][1]
    return [best], len(best.ids)


def _line_enders(tok: Tokenizer, r: _Row) -> list[int]:
    """Tokens that would end the row's line or text before anything but blanks is written
    after the cursor: special tokens, and tokens whose bytes past the healed ones (the
    cursor's partial token, re-grown first) start, after blanks, with a line break."""
    if not r.skip:
        return list(_line_break_first(tok))
    return [*tok.special_ids,
            *(t for t in allowed_tokens(tok, r.heal_left)
              if _breaks_line(tok.token_bytes(t)[r.skip:]))]


LINE_BREAKS = (b"\n", b"\r")


def _breaks_line(data: bytes) -> bool:
    return data.lstrip(b" \t")[:1] in LINE_BREAKS


@lru_cache(maxsize=16)
def tokens_opening_with(tok: Tokenizer, firsts: tuple[bytes, ...]) -> tuple[int, ...]:
    """Ordinary tokens whose first byte after spaces and tabs is one of `firsts` (special
    tokens have no bytes, so never match)."""
    return tuple(i for i in range(tok.vocab_size)
                 if tok.token_bytes(i).lstrip(b" \t")[:1] in firsts)


@lru_cache(maxsize=8)
def _line_break_first(tok: Tokenizer) -> tuple[int, ...]:
    return (*tok.special_ids, *tokens_opening_with(tok, LINE_BREAKS))


def _apply_stops(r: _Row, stops: tuple[str, ...],
                 stop_text: Callable[[str], int | None] | None) -> None:
    if r.heal_left:  # still reproducing the healed prefix: nothing of the output yet
        return
    cut = None
    for s in stops:
        i = r.text.find(s)
        if i != -1 and (cut is None or i < cut):
            cut = i
    if stop_text is not None:
        j = stop_text(r.text)
        if j is not None and (cut is None or j < cut):
            cut = j
    if cut is not None:
        r.text = r.text[:cut]
        r.reason = STOP
