"""Key/value cache for incremental decoding, with reuse of a shared token prefix.

The server keeps one cache between requests. A new prompt usually shares a long prefix with
the previous one (the user typed a few characters), so only the new tail is computed:
`reuse(ids)` truncates the cache to the longest common prefix and says how many tokens
are already done.
"""

from __future__ import annotations

import torch

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

    def expand(self, batch: int, capacity: int | None = None) -> KVCache:
        """A new cache holding `batch` copies of row 0's prefix: for sampling n candidates
        or scoring several continuations. `capacity` (at least the current length) keeps
        the copy small when only a few positions will be appended."""
        new = KVCache.__new__(KVCache)
        new.capacity = self.capacity if capacity is None else \
            min(self.capacity, max(capacity, self.length))
        n = self.length
        new.k = [t.new_zeros(batch, t.shape[1], new.capacity, t.shape[3]) for t in self.k]
        new.v = [t.new_zeros(batch, t.shape[1], new.capacity, t.shape[3]) for t in self.v]
        for dst, src in zip(new.k + new.v, self.k + self.v, strict=True):
            dst[:, :, :n] = src[:1, :, :n]
        new.length = self.length
        new.tokens = list(self.tokens)
        return new
