"""Key/value cache for incremental decoding, with reuse of a shared token prefix.

The server keeps one cache between requests. A new prompt usually shares a long prefix with
the previous one (the user typed a few characters), so only the new tail is computed:
`reuse(ids)` truncates the cache to the longest common prefix and says how many tokens
are already done.
"""

from __future__ import annotations

import torch

from model.attention import attend, attend_shared
from model.config import ModelConfig


class KVCache:
    """Preallocated per-layer K and V tensors of shape [batch, kv_heads, capacity, head_dim].

    `tokens` lists the token ids whose keys and values are stored (row 0), so that a later
    prompt can be matched against them.
    """

    def __init__(self, config: ModelConfig, batch: int = 1, capacity: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.capacity = capacity or config.max_position_embeddings
        if self.capacity > config.max_position_embeddings:
            raise ValueError(
                f"cache capacity {self.capacity} exceeds max_position_embeddings "
                f"{config.max_position_embeddings}"
            )
        shape = (batch, config.num_key_value_heads, self.capacity, config.head_dim)
        # Plain tensors even when made inside inference mode (generate() makes its own):
        # the compiled decode step (model/decode_step.py) is specific to one kind.
        with torch.inference_mode(False):
            self.k = [torch.zeros(shape, device=device, dtype=dtype)
                      for _ in range(config.num_hidden_layers)]
            self.v = [torch.zeros(shape, device=device, dtype=dtype)
                      for _ in range(config.num_hidden_layers)]
        self.length = 0
        self.tokens: list[int] = []

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values at [start, start+T) and return all keys/values so far."""
        end = start + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.capacity}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               start: int) -> torch.Tensor:
        """Store the new keys/values at `start` and attend the queries over all so far."""
        k_all, v_all = self.update(layer, k, v, start)
        return attend(q, k_all, v_all)

    def branch(self, batch: int, room: int) -> BranchCache:
        """`batch` rows continuing what this cache holds, for up to `room` positions each
        (beams, sampled candidates, scored continuations); see BranchCache."""
        return BranchCache(self, batch, room)

    def advance(self, ids: list[int]) -> None:
        """Record that `ids` (row 0) were appended; called once per forward, after all layers."""
        self.length += len(ids)
        self.tokens.extend(ids)

    def truncate(self, n: int) -> None:
        """Forget everything after the first `n` positions (the data stays; it is overwritten)."""
        self.length = min(self.length, max(0, n))
        del self.tokens[self.length:]

    def reuse(self, ids: list[int]) -> int:
        """Keep the longest prefix shared with `ids`, minus one token so the caller always
        computes at least the last position's logits. Returns the number of reused tokens."""
        n = 0
        limit = min(len(self.tokens), len(ids) - 1)
        while n < limit and self.tokens[n] == ids[n]:
            n += 1
        self.truncate(n)
        return n



ROOM_STEP = 32


def branch_room(room: int) -> int:
    """The positions a branch keeps for `room` asked: rounded up to a multiple of
    ROOM_STEP, so that requests of slightly different lengths (a healed token more or
    less) make branches of one shape, which the compiled beam step needs
    (model/decode_step.py)."""
    return -(-room // ROOM_STEP) * ROOM_STEP


class BranchCache:
    """Rows that each continue, in their own way, what a batch-1 KVCache holds.

    The base cache's keys and values are shared, not copied: each row stores only the
    positions after them, so memory and time per step stay flat in the prompt's length
    (model/attention.attend_shared). The base must not change while a branch is in use.
    """

    def __init__(self, base: KVCache, batch: int, room: int):
        if base.batch != 1:
            raise ValueError("a branch continues a batch-1 cache")
        self.base = base
        self.prefix = base.length
        self.capacity = min(base.capacity, base.length + branch_room(room))
        _, kv_heads, _, head_dim = base.k[0].shape
        shape = (batch, kv_heads, self.capacity - self.prefix, head_dim)
        with torch.inference_mode(False):        # plain tensors, as KVCache's
            self.k = [t.new_zeros(shape) for t in base.k]
            self.v = [t.new_zeros(shape) for t in base.v]
        self.length = base.length

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               start: int) -> torch.Tensor:
        """Store the rows' new keys/values at `start` (past the prefix) and attend over
        the prefix and each row's own positions."""
        i, end = start - self.prefix, start - self.prefix + k.shape[2]
        if i < 0 or start + k.shape[2] > self.capacity:
            raise ValueError(f"branch cache overflow: positions {start}..{start + k.shape[2]} "
                             f"outside {self.prefix}..{self.capacity}")
        self.k[layer][:, :, i:end] = k
        self.v[layer][:, :, i:end] = v
        base = self.base
        return attend_shared(q, base.k[layer][:, :, :self.prefix],
                             base.v[layer][:, :, :self.prefix],
                             self.k[layer][:, :, :end], self.v[layer][:, :, :end])

    def advance(self, ids: list[int]) -> None:
        self.length += len(ids)

    def reorder(self, rows: list[int]) -> None:
        """Row r takes what row rows[r] holds (beam search keeps its best branches)."""
        n = self.length - self.prefix
        order = torch.tensor(rows, device=self.k[0].device)
        for t in self.k + self.v:
            t[:, :, :n] = t[order, :, :n]

    def stored_bytes(self) -> int:
        """Bytes of the rows' own keys and values (the shared prefix not counted)."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)
