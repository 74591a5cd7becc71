"""Horizon-length prediction: a training-only head that learns how much of a FIM middle
is left, so the model learns where a middle ends.

Why: next-token loss teaches a FIM model what comes next but says little about when to
stop (how often our FIM suggestions fail by stopping in the wrong place is not measured
yet). Ding et al. ("Horizon-Length Prediction", 2024) add a linear head on the last
hidden states that predicts, at every position of a middle, the share of the middle still
to come, and report large FIM gains for almost no cost. The head is not part of the
model: it lives in the loss module, is saved in training checkpoints only, and is never
exported, so the model directory stays a plain Llama that `transformers` loads.

Targets come from the token ids alone (no change to the data pipeline): every position
from a `<fim_middle>` up to the token before the one that ends the example predicts a
token of what the server would generate; its target is how many tokens are still to come
(the ending token included), on a log scale scaled into (0, 1]:
log(1 + remaining) / log(1 + window). The paper divides by the middle's length instead;
here, in SPM order (`<fim_middle>` prefix middle), the ids do not say where the prefix
ends, so a fixed scale is used. A middle the window cut off before its end has no known
length and is left out (target -1). What ends an example: `<|endoftext|>`, or, with
repository packing, the `<file_sep>` of the next file (a file inside a repository is not
closed by `<|endoftext|>`, see training/fim.py's `context_fim`); the server stops at
either, as at any special token.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -1.0


def horizon_targets(batch: np.ndarray, middle_id: int, end_ids: tuple[int, ...]
                    ) -> np.ndarray:
    """For a batch of training rows [B, T + 1], the targets [B, T] of the positions that
    predict the next token (the model's inputs are row[:-1]): the scaled count of tokens
    still to come inside a FIM example's generated part, IGNORE elsewhere."""
    rows, length = batch.shape
    out = np.full((rows, length - 1), IGNORE, dtype=np.float32)
    scale = np.log1p(length - 1)
    for r in range(rows):
        row = batch[r]
        for m in np.flatnonzero(row == middle_id):
            ends = np.flatnonzero(np.isin(row[m + 1:], end_ids))
            if not len(ends):
                continue                   # the window cut this middle off
            end = m + 1 + int(ends[0])     # index of the token that ends the example
            # position p (m <= p < end) predicts token p + 1; end - p tokens are still to come
            positions = np.arange(m, end)
            out[r, positions] = np.log1p(end - positions) / scale
    return out


class HorizonHead(nn.Module):
    """hidden [B, T, H] -> the predicted remaining share of the middle, in (0, 1)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.proj(hidden.float()).squeeze(-1))


def horizon_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the positions inside a middle (0 when a batch has none).
    Written without boolean indexing, so torch.compile sees static shapes."""
    mask = target >= 0
    err = F.l1_loss(pred, target.clamp(min=0), reduction="none") * mask
    return err.sum() / mask.sum().clamp(min=1)
