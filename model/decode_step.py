"""A compiled one-token decode step: the per-operation overhead of eager PyTorch taken out.

Decoding one token with the shipped model is ~150 small tensor operations (norms, rotary,
casts around the int8 products, reshapes, adds), each paying a fixed dispatch cost that
dwarfs its arithmetic on a CPU: an eager step takes ~3 ms where its products take ~1.
`torch.compile` (inductor) turns the step into a few fused kernels around the products,
so it is written here for compilation:

- it works in the KV cache's own preallocated buffers (model/kv_cache.KVCache: one tensor
  per layer of the cache's full capacity), writing the new key/value at the position
  given as a tensor, and attends over the positions written so far rounded up to SPAN,
  with those not written yet masked out: that length is the graph's one dynamic size
  (traced as such), so one compiled graph serves every position and nothing is
  recompiled as the cache grows;
- a second graph does the same for beam search: its rows over a branch of the prompt's
  cache (kv_cache.BranchCache, whose room is rounded up so that requests share a shape),
  the prefix and each row's own positions masked as attention.attend_shared computes them;
- a third checks a draft of the project memory (model/generate._drafted_greedy): up to
  `verify` tokens at once, padded to that width at the end, each position masked as the
  causal attention of the eager model masks it;
- only those steps take it (greedy decoding, drafts' verification, a mid-line request's
  beams); prompts and anything else stay eager.

Calling a compiled step has fixed costs of its own, which on a CPU are a fifth of a
step of the shipped model: dynamo evaluating its guards over every weight and cache tensor
the step reads (~0.2 ms), and inductor's Python wrapper launching each kernel and product
(~0.3 ms). So on a CPU the wrapper is generated in C++ (inductor's `cpp_wrapper`; plain
Python again if that fails to build), and calls skip the guards that do not tell this
step's graphs apart (`skip_guard_eval_unsafe`): `_fits` has already checked what they
would, the cache's kind, shapes and capacity, the batch and inference mode, and the model's
weights are not replaced while it serves. On a 2-core AMD EPYC the two took a step of the
shipped model from 2.55 to 2.17 ms (medians of 8 interleaved rounds, in one process).

Compiling costs seconds (about 25-72 s for the shipped model on 2 cores the first time,
4-9 s once inductor's on-disk cache holds it): the server compiles in the background after its
warm-up and answers from the eager model until the compiled step is ready
(server/engine.py). A step that would need compiling again (another capacity, another
mode) is not compiled on a request's time: it falls back to the eager model.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from model import native
from model.device import clock
from model.kv_cache import BranchCache, KVCache
from model.paths import cache_dir
from model.transformer import Transformer

log = logging.getLogger("codecomplete")

# A graph attends over the cache's written positions rounded up to a multiple of this,
# not over its whole capacity (one graph, that length dynamic). On a 2-core AMD EPYC, in
# one process, 8 interleaved rounds, the same logits to the bit: a step of the shipped
# model after a prompt of 300 / 440 / 700 tokens 1.84 / 1.91 / 1.99 ms against 2.39 / 2.12 /
# 2.13 over the whole 1,024, a draft's 9-token check 6.4 / 6.1 / 6.4 against 8.3 / 7.4 / 8.1.
SPAN = 32
GRAPHS_PER_FUNCTION = 64   # compiled graphs of each step function a process may hold (_compile)


def available() -> str | None:
    """Why compiled decoding cannot be used with this PyTorch, or None when it can."""
    if not hasattr(torch, "compile") or not hasattr(torch.compiler, "set_stance"):
        return f"torch {torch.__version__} has no torch.compiler.set_stance (needs 2.6+)"
    return None


def _use_our_kernel_cache() -> None:
    """Point inductor's cache of compiled kernels at ours (model/paths.py) rather than its
    default in /tmp, which a reboot empties, unless the user chose a folder. Importing
    torch._dynamo (building any model does) already writes that default into the
    environment, so a value equal to it is replaced too; inductor reads the variable
    afresh for every kernel it caches."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is not None:
        try:
            from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        except ImportError:                       # another torch: keep what is set
            return
        if os.path.abspath(current) != os.path.abspath(default_cache_dir()):
            return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor")


def compile_by_default(device: torch.device) -> bool:
    """Whether the server compiles the decode step when not told (`--compile auto`): on a
    CPU, where it measured ~2x faster per token (docs/models.md). No GPU was at hand to
    measure it on one (there it would want a CUDA graph as well); `--compile on` tries."""
    return device.type == "cpu" and available() is None


class DecodeStep:
    """The model's one-token step for caches of `capacity` positions, compiled on
    `compile()`; called by Transformer.forward, which gets None back whenever the step
    does not apply (and then runs the eager model). With `beams`, a second graph serves
    beam search's steps: that many rows over a BranchCache of `room` own positions
    (kv_cache.branch_room) continuing a cache of `capacity`."""

    def __init__(self, model: Transformer, capacity: int, beams: int = 0, room: int = 0,
                 verify: int = 0):
        self.model = model
        self.capacity = capacity
        self.beams, self.room = beams, room
        self.verify = verify
        self.ready = False                         # in use: compiled, and kept
        self.compiled = False                      # its graphs built and ran (in use or not)
        self.failed: str | None = None
        self.steps = 0                             # forward passes made by compiled steps
        self.checks = 0                            # ... of which drafts' checks
        self.wrapper = ""                          # inductor's wrapper code: "C++" or "Python"
        self._fn = None
        self._branch_fn = None
        self._verify_fn = None
        p = model.embed_tokens.weight
        self._slots = torch.arange(capacity, device=p.device)
        self._own_slots = torch.arange(room, device=p.device)
        self._offsets = torch.arange(verify, device=p.device)

    def _layers(self, token: torch.Tensor, pos: torch.Tensor,
                attention: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor],
                                    torch.Tensor]) -> torch.Tensor:
        """Logits [B, T, vocab] for `token` [B, T] at positions `pos` [T]: the layers as
        Transformer.forward runs them, with `attention(layer, q, k, v)` (q [B, H, T, D],
        k and v [B, Hkv, T, D]) storing k and v and returning [B, H, T, D] in float32."""
        m, c = self.model, self.model.config
        H, Hkv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        B, T = token.shape
        x = m.embed_tokens(token)
        if m.embed_positions is not None:
            x = x + m.embed_positions(pos)
        if m.rotary is not None:
            cos = m.rotary.cos.index_select(0, pos).to(x.dtype)
            sin = m.rotary.sin.index_select(0, pos).to(x.dtype)
        for i, block in enumerate(m.layers):
            a = block.self_attn
            h = block.input_layernorm(x)
            if a.qkv_proj is not None:
                q, k, v = a.qkv_proj(h).split([H * D, Hkv * D, Hkv * D], dim=-1)
            else:
                q, k, v = a.q_proj(h), a.k_proj(h), a.v_proj(h)
            q = q.view(B, T, H, D).transpose(1, 2)
            k = k.view(B, T, Hkv, D).transpose(1, 2)
            v = v.view(B, T, Hkv, D).transpose(1, 2)
            if m.rotary is not None:               # as Rotary.forward
                q = q * cos + q.roll(D // 2, dims=-1) * sin
                k = k * cos + k.roll(D // 2, dims=-1) * sin
            y = attention(i, q, k, v).to(x.dtype).reshape(B, H, T, D).transpose(1, 2) \
                .reshape(B, T, H * D)
            x = x + a.o_proj(y)
            x = x + block.mlp(block.post_attention_layernorm(x))
        return m.lm_head(m.norm(x))

    def step(self, token: torch.Tensor, pos: torch.Tensor, ks: list[torch.Tensor],
             vs: list[torch.Tensor], slots: torch.Tensor) -> torch.Tensor:
        """Logits [1, 1, vocab] for `token` [1, 1] at position `pos` [1]; the key and value
        of every layer are written into `ks`/`vs` [1, Hkv, capacity, D] at `pos`."""
        c = self.model.config
        Hkv, D = c.num_key_value_heads, c.head_dim
        hidden = slots > pos                       # positions not written yet
        n = slots.shape[0]                         # ... of those attended over (SPAN)

        def attention(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                      ) -> torch.Tensor:
            ks[i].index_copy_(2, pos, k)
            vs[i].index_copy_(2, pos, v)
            if native.attends(ks[i]):              # decided when the graph is traced
                return native.decode_attention(q.reshape(Hkv, -1, D).float(), ks[i][0],
                                               vs[i][0], pos)
            # the query heads of one K/V head as rows of one product, in float32 as the
            # eager attention computes one query on a CPU (model/attention.py); 3-d
            # products over the first n positions, sliced here so that the buffers
            # passed in keep static shapes and strides (views passed in had dynamic ones)
            qg = q.reshape(Hkv, -1, D).float()
            s = torch.bmm(qg, ks[i][0, :, :n].float().transpose(1, 2)) * (D ** -0.5)
            s = s.masked_fill(hidden, float("-inf"))
            return torch.bmm(F.softmax(s, dim=-1), vs[i][0, :, :n].float())
        return self._layers(token, pos, attention)

    def verify_step(self, tokens: torch.Tensor, pos: torch.Tensor, ks: list[torch.Tensor],
                    vs: list[torch.Tensor], slots: torch.Tensor, offsets: torch.Tensor
                    ) -> torch.Tensor:
        """Logits [1, W, vocab] for a draft's `tokens` [1, W] at positions pos..pos+W-1,
        their keys and values written there: `step` for W tokens at once, each attending
        over the positions up to its own (a draft shorter than W is padded at the end,
        where nothing before it looks)."""
        c = self.model.config
        H, Hkv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        positions = pos + offsets
        hidden = slots.unsqueeze(0) > positions.unsqueeze(1)        # [W, n]
        W, n = tokens.shape[1], slots.shape[0]

        def attention(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                      ) -> torch.Tensor:
            ks[i].index_copy_(2, positions, k)
            vs[i].index_copy_(2, positions, v)
            if native.attends(ks[i]):              # decided when the graph is traced
                # rows (query head, position): row r of a K/V head is position r % W
                out = native.decode_attention(q.reshape(Hkv, H // Hkv * W, D).float(),
                                              ks[i][0], vs[i][0], positions)
                return out.reshape(1, H, W, D)
            # a K/V head's query heads and positions as the rows of one plain product:
            # one broadcast over the query heads made a whole check 15.3 ms instead of
            # 11.5 on a 2-core AMD EPYC (and 3-d, as in `step`)
            qg = q.reshape(Hkv, H // Hkv * W, D).float()
            s = torch.bmm(qg, ks[i][0, :, :n].float().transpose(1, 2)) * (D ** -0.5)
            s = s.view(Hkv, H // Hkv, W, n).masked_fill(hidden, float("-inf"))
            p = F.softmax(s, dim=-1).view(Hkv, H // Hkv * W, n)
            return torch.bmm(p, vs[i][0, :, :n].float()).reshape(1, H, W, D)
        return self._layers(tokens, positions, attention)

    def branch_step(self, tokens: torch.Tensor, pos: torch.Tensor, own: torch.Tensor,
                    prefix: torch.Tensor, base_ks: list[torch.Tensor],
                    base_vs: list[torch.Tensor], ks: list[torch.Tensor],
                    vs: list[torch.Tensor], slots: torch.Tensor,
                    own_slots: torch.Tensor) -> torch.Tensor:
        """Logits [B, 1, vocab] for beam rows' `tokens` [B, 1] at position `pos`: each
        row's key and value go into its own buffers `ks`/`vs` [B, Hkv, room, D] at `own`
        (= pos - prefix), and every row attends over the shared `prefix` positions of
        `base_ks`/`base_vs` [1, Hkv, capacity, D] and its own positions up to `own`: the
        arithmetic of attention.attend_shared, over fixed shapes."""
        c = self.model.config
        Hkv, D = c.num_key_value_heads, c.head_dim
        B = tokens.shape[0]
        shared_hidden = slots >= prefix            # the prompt's first n positions (SPAN)
        own_hidden = own_slots > own
        n = slots.shape[0]

        def attention(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                      ) -> torch.Tensor:
            ks[i].index_copy_(2, own, k)
            vs[i].index_copy_(2, own, v)
            G = q.shape[1] // Hkv
            if native.attends(ks[i]):              # decided when the graph is traced
                return native.branch_attention(q.reshape(B, Hkv, G, D).float(),
                                               base_ks[i][0], base_vs[i][0], prefix,
                                               ks[i], vs[i], own)
            qg = q.reshape(B, Hkv, G, D).float()
            stacked = qg.permute(1, 0, 2, 3).reshape(Hkv, B * G, D)
            s_shared = torch.bmm(stacked, base_ks[i][0, :, :n].float().transpose(1, 2)) \
                .masked_fill(shared_hidden, float("-inf")) \
                .reshape(Hkv, B, G, n).permute(1, 0, 2, 3)            # [B, Hkv, G, n]
            s_own = (qg @ ks[i].float().transpose(-1, -2)) \
                .masked_fill(own_hidden, float("-inf"))                # [B, Hkv, G, room]
            probs = (torch.cat([s_shared, s_own], dim=-1) * D ** -0.5).softmax(dim=-1)
            p_shared, p_own = probs.split([n, s_own.shape[-1]], dim=-1)
            out = torch.bmm(p_shared.permute(1, 0, 2, 3).reshape(Hkv, B * G, n),
                            base_vs[i][0, :, :n].float()) \
                .reshape(Hkv, B, G, D).permute(1, 0, 2, 3)
            return out + p_own @ vs[i].float()
        return self._layers(tokens, pos, attention)

    def compile(self) -> float:
        """Compile the steps by running them on scratch caches; returns the seconds it
        took. On failure (no C++ compiler, an unsupported layer) the steps stay off and
        `failed` says why, in one sentence."""
        t0 = time.perf_counter()
        why = available()
        if why is not None:
            self.failed = why
            return 0.0
        _use_our_kernel_cache()
        tries = [{"cpp_wrapper": True}, {}] if self._slots.device.type == "cpu" else [{}]
        for n, options in enumerate(tries):
            self.failed = self._compile(options)
            self.wrapper = "C++" if options.get("cpp_wrapper") else "Python"
            if self.failed is None or n == len(tries) - 1:
                break
            log.info("%s; compiling it again with inductor's Python wrapper", self.failed)
        self.ready = self.compiled = self.failed is None
        return time.perf_counter() - t0

    def _compile(self, options: dict) -> str | None:
        """Compile the steps with inductor `options` (`_build`): None when they work
        (they are then the ones used), else why not, in one sentence."""
        try:
            # Only the attended length is dynamic (marked): shapes that differ from an
            # earlier DecodeStep's (another capacity, model) get a graph of their own, not
            # one made dynamic in them. And dynamo counts every DecodeStep's graphs of
            # these functions against one recompile limit (8): nothing in them tells
            # instances apart by identity, and a step not yet garbage-collected keeps its
            # entry, so a process that builds several (tests, benchmarks, a model loaded
            # again) met that limit.
            with torch._dynamo.config.patch(recompile_limit=GRAPHS_PER_FUNCTION,
                                            automatic_dynamic_shapes=False):
                fns = self._build(options)
        except Exception as e:                     # any failure: stay eager
            return (f"compiling the decode step failed ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else 'no message'})")
        self._fn, self._branch_fn, self._verify_fn = fns
        return None

    def _build(self, options: dict) -> tuple[Callable, Callable | None, Callable | None]:
        """The compiled step, beam step and check, run on scratch caches. Each graph is
        traced with the length it attends over marked dynamic, then run at the cache's far
        end too, where a graph that had fixed that length would have to compile again
        (which fails here, as it would on a request's time)."""
        def compiled(fn: Callable) -> Callable:
            return torch.compile(fn, fullgraph=True, dynamic=None, options=options)
        fn = compiled(self.step)
        branch_fn = compiled(self.branch_step) if self.beams else None
        verify_fn = compiled(self.verify_step) if self.verify > 1 else None
        cache = self.model.new_cache(1, self.capacity)
        device = self._slots.device

        def at(n: int, width: int = 1, rows: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
            """Scratch tokens and position n, made in _twice's inference mode (as
            generate()'s are: the graph's guards tell the two kinds apart)."""
            return (torch.zeros(rows, width, dtype=torch.long, device=device),
                    torch.tensor([n], device=device))
        last = self.capacity - max(2, self.verify + 1, self.room)
        _twice(lambda n: fn(*at(n), cache.k, cache.v, self._attended(n + 1, n == 0)), last)
        if verify_fn is not None:
            _twice(lambda n: verify_fn(*at(n, self.verify), cache.k, cache.v,
                                       self._attended(n + self.verify, n == 0),
                                       self._offsets), last)
        if branch_fn is not None:
            def rows_after(prefix: int) -> Callable[[int], object]:
                """A call of the beam step at own position n of a branch after `prefix`
                positions (the length its graph attends over: marked at n = 0)."""
                cache.truncate(0)
                cache.advance([0] * prefix)
                branch = cache.branch(self.beams, self.room)
                if branch.k[0].shape[2] != self.room:
                    raise ValueError(f"a branch of {self.room} positions does not fit "
                                     f"a cache of {self.capacity}")
                return lambda n: self._call_branch(branch_fn, at(n, rows=self.beams)[0],
                                                   branch, n, mark=n == 0)
            _twice(rows_after(2))
            _reused(rows_after(last))              # a prompt near the cache's end
        return fn, branch_fn, verify_fn

    def _attended(self, end: int, mark: bool = False) -> torch.Tensor:
        """The slot numbers of the cache's first `end` positions rounded up to SPAN: a
        graph attends over that many, not over the whole capacity (its length is the
        graphs' one dynamic size; `mark` marks it so, for the compiling call). Never all
        of the capacity: a graph traced over a part of the buffers holds only while it is
        a part (its products' strides), so the last position is left to the eager model
        (`_fits`)."""
        slots = self._slots[:min(self.capacity - 1, max(1, -(-end // SPAN)) * SPAN)]
        if mark:
            torch._dynamo.mark_dynamic(slots, 0)
        return slots

    def keep_if_faster(self, trials: int = 5) -> tuple[float, float]:
        """Time a one-token step compiled and eager (the model's own forward, best of
        `trials` each, taken in turns) and turn the compiled steps off when they are not
        the faster: for the shipped model they take half the time, but where the products
        are the whole step (a 0.5B model on a CPU) inductor's code measured no faster than
        eager PyTorch's (docs/models.md). Returns the two times in seconds."""
        eager_cache = self.model.new_cache(1, self.capacity)
        fast_cache = self.model.new_cache(1, self.capacity)
        device = self._slots.device
        times: dict[bool, list[float]] = {True: [], False: []}
        counted = self.steps
        with torch.inference_mode():
            start = torch.zeros(1, 8, dtype=torch.long, device=device)
            for cache in (eager_cache, fast_cache):
                self.model(start, cache, last_only=True)
            x = torch.zeros(1, 1, dtype=torch.long, device=device)
            steps = min(trials + 1, self.capacity - eager_cache.length)
            for _ in range(steps):                      # the first of each: a warm-up
                t0 = clock(device)
                self(x, fast_cache)
                times[True].append(clock(device) - t0)
                t0 = clock(device)
                self.model.lm_head(self.model.features(x, eager_cache))   # not decode_step
                times[False].append(clock(device) - t0)
        self.steps = counted                            # status counts requests' steps
        if len(times[True]) < 2:                        # no room to measure: keep it
            return 0.0, 0.0
        fast, slow = min(times[True][1:]), min(times[False][1:])
        if self.ready and fast >= slow:
            self.ready = False
            self.failed = (f"the compiled step measured no faster than the eager one "
                           f"({fast * 1e3:.1f} against {slow * 1e3:.1f} ms a token)")
        return fast, slow

    def _call_branch(self, fn: Callable, tokens: torch.Tensor, cache: BranchCache,
                     n: int, mark: bool = False) -> torch.Tensor:
        device = tokens.device
        return fn(tokens, torch.tensor([cache.prefix + n], device=device),
                  torch.tensor([n], device=device), torch.tensor([cache.prefix], device=device),
                  cache.base.k, cache.base.v, cache.k, cache.v,
                  self._attended(cache.prefix, mark), self._own_slots)

    def _fits(self, input_ids: torch.Tensor, cache: object) -> bool:
        if type(cache) is KVCache:
            B, T = input_ids.shape
            if B != 1 or cache.capacity != self.capacity:
                return False
            if T == 1:                             # not the last position (_attended)
                return cache.length < self.capacity - 1
            return self._verify_fn is not None and 1 < T <= self.verify \
                and cache.length + self.verify < self.capacity
        return type(cache) is BranchCache and self._branch_fn is not None \
            and input_ids.shape == (self.beams, 1) and cache.k[0].shape[2] == self.room \
            and cache.base.capacity == self.capacity and cache.length < cache.capacity

    def __call__(self, input_ids: torch.Tensor, cache: object) -> torch.Tensor | None:
        """The logits of a compiled step, or None where none applies: not ready, not one
        token of batch 1 over a KVCache of this capacity (nor 2..`verify` tokens of a
        draft, nor `beams` rows over a BranchCache of `room`), or outside inference mode
        (where the compiled graph, built without autograd, would recompile)."""
        if not self.ready or not torch.is_inference_mode_enabled() \
                or not self._fits(input_ids, cache):
            return None
        if not input_ids.is_inference():           # as generate()'s (the graph's guards
            input_ids = input_ids.clone()          # tell the two kinds apart)
        T = input_ids.shape[1]
        try:
            # the guards that do not tell graphs apart are skipped (module docstring)
            with torch.compiler.set_stance("fail_on_recompile", skip_guard_eval_unsafe=True):
                if type(cache) is KVCache and T == 1:
                    logits = self._fn(input_ids, torch.tensor([cache.length],
                                                              device=input_ids.device),
                                      cache.k, cache.v, self._attended(cache.length + 1))
                elif type(cache) is KVCache:
                    padded = F.pad(input_ids, (0, self.verify - T))
                    logits = self._verify_fn(padded, torch.tensor(
                        [cache.length], device=input_ids.device), cache.k, cache.v,
                        self._attended(cache.length + self.verify), self._offsets)[:, :T]
                    self.checks += 1
                else:
                    logits = self._call_branch(self._branch_fn, input_ids, cache,
                                               cache.length - cache.prefix)
        except Exception as e:                     # a recompile, or worse
            self.ready = False
            self.failed = f"the compiled decode step stopped ({type(e).__name__}: {e}); " \
                          "decoding eagerly"
            log.warning(self.failed)
            return None
        cache.advance(input_ids[0].tolist())
        self.steps += 1
        return logits


def _twice(call: Callable[[int], object], far: int | None = None) -> None:
    """Run a compiled step at positions 0 and 1 of a scratch cache, as generate() runs it
    (in inference mode): the first call compiles, the second must reuse the graph, and so
    must a call at position `far`."""
    with torch.inference_mode():
        call(0)
    _reused(call, 1)
    if far is not None:
        _reused(call, far)


def _reused(call: Callable[[int], object], n: int = 0) -> None:
    """`call(n)` in inference mode, failing if it would compile a graph again."""
    with torch.inference_mode(), torch.compiler.set_stance("fail_on_recompile"):
        call(n)


def compile_decoding(model: Transformer, capacity: int, beams: int = 0, room: int = 0,
                     verify: int = 0, keep_slower: bool = False) -> DecodeStep:
    """Compile `model`'s one-token step for caches of `capacity` positions (with `beams`,
    beam search's step over `room` own positions; with `verify`, the check of a draft of
    up to that many tokens) and make the model use it (Transformer.decode_step) once it
    works and measures faster than the eager step, or whatever it measures with
    `keep_slower` (`server --compile on`); `failed` says why not."""
    step = DecodeStep(model, capacity, beams, room, verify)
    step.compile()
    if step.ready and not keep_slower:
        step.keep_if_faster()
    if step.ready:
        model.decode_step = step
    return step
