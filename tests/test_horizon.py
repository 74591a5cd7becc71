"""Horizon-length prediction (training/horizon.py): its targets, and a training run with the
head: the head learns, is saved and restored with checkpoints, and never reaches the model
directory."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import torch
from safetensors.torch import load_file

from model.checkpoint import load_model_dir
from training.checkpoints import load_checkpoint
from training.config import TrainConfig
from training.horizon import IGNORE, horizon_loss, horizon_targets
from training.train import NextTokenLoss, train

from .test_training import tiny_config

MID, EOT, SEP = 3, 0, 5


def test_targets_count_what_is_left_of_each_closed_middle():
    # ids: x <mid> a b <eot> y <mid> c   (the second middle is cut off by the window)
    row = np.array([[7, MID, 8, 9, EOT, 7, MID, 8]])
    t = horizon_targets(row, MID, (EOT, SEP))
    assert t.shape == (1, 7)
    scale = math.log1p(7)
    # position 1 (<mid>) predicts a: a, b and <eot> are to come; position 3 predicts <eot>
    assert np.allclose(t[0, 1:4], [math.log1p(3) / scale, math.log1p(2) / scale,
                                   math.log1p(1) / scale])
    assert (t[0, [0, 4, 5, 6]] == IGNORE).all()


def test_with_repository_packing_the_next_files_header_ends_a_middle():
    # ids: <mid> a <file_sep> path <mid> b c   (files inside a repository are not closed
    # by <|endoftext|>; the next file's header follows the middle)
    row = np.array([[MID, 8, SEP, 9, MID, 8, 9, 7]])
    t = horizon_targets(row, MID, (EOT, SEP))
    scale = math.log1p(7)
    assert np.allclose(t[0, :2], [math.log1p(2) / scale, math.log1p(1) / scale])
    assert (t[0, 2:] == IGNORE).all()


def test_the_loader_with_repository_packing_gives_the_head_targets(small_dataset):
    """Real training windows, packed by repository as the 1024-token sitting was: the
    head must get targets there (it got almost none when only <|endoftext|> ended one)."""
    from training.data import PackedLoader, load_dataset
    tok, _, splits = load_dataset(small_dataset)
    loader = PackedLoader(splits["train"], tok, 256, 8, seed=1, fim_rate=0.9, spm_rate=0.5,
                          repo_packing=True)
    rows = np.concatenate([loader.next_batch() for _ in range(4)])
    t = horizon_targets(rows, tok.fim_middle_id, (tok.eot_id, tok.file_sep_id))
    assert (t >= 0).sum() > 0.1 * t.size


def test_loss_ignores_positions_outside_middles():
    pred = torch.tensor([[0.5, 0.2, 0.9]])
    assert horizon_loss(pred, torch.tensor([[IGNORE, 0.4, IGNORE]])).item() \
        == torch.tensor(0.2).item()
    assert horizon_loss(pred, torch.full((1, 3), IGNORE)).item() == 0.0


def test_next_token_loss_is_unchanged_without_targets():
    from model.config import ModelConfig
    from model.transformer import Transformer
    model = Transformer(ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    num_key_value_heads=1, max_position_embeddings=32))
    batch = torch.randint(0, 64, (2, 17))
    plain = NextTokenLoss(model)(batch)
    with_head = NextTokenLoss(model, horizon_weight=1.0)
    assert torch.equal(with_head(batch), plain)
    targets = torch.full((2, 16), 0.5)
    # the head starts at zero: sigmoid(0) = 0.5 everywhere, so its loss starts at 0
    assert torch.allclose(with_head(batch, horizon=targets), plain)
    assert TrainConfig().horizon_weight == 0.0           # off unless asked for


def test_training_with_the_head_learns_it_resumes_it_and_exports_only_the_model(
        tmp_path, small_dataset):
    cfg = tiny_config(small_dataset, tmp_path / "a", max_steps=20, eval_every=10,
                      checkpoint_every=10, horizon_weight=1.0, fim_rate=0.9)
    run = train(cfg, log=lambda s: None)
    last = load_checkpoint(run / "checkpoints" / "step_0000020").state
    head = last["horizon"]
    assert head["proj.weight"].abs().sum() > 0       # it started at zero and was trained
    # The model directory is a plain model: no head in it, and it loads.
    best = run / "best"
    keys = load_file(best / "model.safetensors").keys()
    assert all(k.startswith(("model.layers.", "model.embed_tokens.", "model.norm.",
                             "lm_head.")) for k in keys), sorted(keys)
    load_model_dir(best, device="cpu")
    # Resume from step 10 of a copy: the same head and weights at step 20.
    copy = tmp_path / "b" / run.name
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / "step_0000020")
    (copy / "checkpoints" / "latest.json").write_text(json.dumps(
        {"step": 10, "dir": "step_0000010"}))
    train(tiny_config(small_dataset, tmp_path / "b", max_steps=20, eval_every=10,
                      checkpoint_every=10, horizon_weight=1.0, fim_rate=0.9),
          resume=True, log=lambda s: None)
    again = load_checkpoint(copy / "checkpoints" / "step_0000020").state["horizon"]
    assert torch.equal(again["proj.weight"], head["proj.weight"])
    wa = load_file(run / "checkpoints" / "step_0000020" / "model.safetensors")
    wb = load_file(copy / "checkpoints" / "step_0000020" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
