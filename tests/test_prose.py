"""Prose-weighted training (training/prose.py): which tokens are comment text and docstrings,
through cuts between windows and FIM rearrangement, and the weighted loss in a real run."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
import torch

from training.data import DataError, PackedLoader, load_dataset
from training.fim import document_tokens
from training.prose import CODE, prose_flags, reading_order, row_prose
from training.train import NextTokenLoss, train

from .test_training import metrics, tiny_config

SOURCE = '''import os


def load(path, mode="rb"):
    """Read the whole settings file
    and give back its parsed contents."""
    # quietly, because missing files are normal
    with open(path, mode) as handle:
        return handle.read()  # trailing remark here


class Store:
    \'\'\'Keeps values between restarts.\'\'\'

    def get(self, key):
        return self.values["colour"]
'''
PROSE_WORDS = ("Read", "whole", "settings", "parsed", "contents", "quietly", "missing",
               "normal", "trailing", "remark", "values", "between", "restarts")
# ("Keeps" may share a token with the quotes before it: a token is prose when its first
# character is, so such a token counts as the opening quotes, code.)
CODE_WORDS = ("import", "def", "load", "path", "mode", "rb", "with", "open", "handle",
              "return", "read", "class", "Store", "get", "self", "key", "colour")


def prose_words(tok, ids, flags) -> list[str]:
    text = "".join(tok.token_bytes(t).decode("utf-8", "replace")
                   for t, f in zip(ids, flags, strict=True) if f)
    return re.findall(r"\w+", text)


def test_comment_text_and_docstrings_are_prose_the_rest_is_code(tokenizer):
    ids = tokenizer.encode(SOURCE)
    flags, end = prose_flags(tokenizer, ids)
    words = prose_words(tokenizer, ids, flags)
    assert set(PROSE_WORDS) <= set(words)
    assert not set(CODE_WORDS) & set(words), set(CODE_WORDS) & set(words)
    assert end == CODE
    # The delimiters stay code: where a comment or a docstring opens is the model's call.
    opening = [t for t, f in zip(ids, flags, strict=True) if not f
               and tokenizer.token_bytes(t).strip() in (b'"""', b"#", b"'''")]
    assert opening


@pytest.mark.parametrize("cut_after", ["and give", "because missing", "Keeps values"])
def test_a_window_cut_inside_prose_continues_in_the_next_one(tokenizer, cut_after):
    ids = tokenizer.encode(SOURCE)
    whole, _ = prose_flags(tokenizer, ids)
    at = len(tokenizer.encode(SOURCE[:SOURCE.index(cut_after) + len(cut_after)]))
    assert tokenizer.decode(ids[:at]) + tokenizer.decode(ids[at:]) == SOURCE
    first, state = prose_flags(tokenizer, ids[:at])
    assert state != CODE                        # the cut is inside a comment or docstring
    second, _ = prose_flags(tokenizer, ids[at:], state)
    assert first + second == whole
    # Started as code, the rest of the docstring would read as code, and the code after
    # its closing quotes as an open string: the carried state is what avoids that.
    naive, _ = prose_flags(tokenizer, ids[at:])
    assert naive != whole[at:]
    with pytest.raises(ValueError, match="prose state"):
        prose_flags(tokenizer, ids, "'''x")


def test_fim_examples_keep_the_prose_of_their_text(tokenizer):
    plain = tokenizer.encode(SOURCE)
    expected = prose_words(tokenizer, plain, prose_flags(tokenizer, plain)[0])
    for seed in range(40):
        example = document_tokens(tokenizer, SOURCE, random.Random(seed), fim_rate=1.0,
                                  spans="line" if seed % 2 else "char")
        assert tokenizer.fim_middle_id in example
        mask = row_prose(tokenizer, example)
        order = reading_order(tokenizer, example)
        assert sorted(order) == list(range(len(example)))
        in_order = [example[i] for i in order]
        assert tokenizer.decode(in_order) == SOURCE
        assert prose_words(tokenizer, in_order, [bool(mask[i]) for i in order]) == expected
        assert not any(mask[i] for i, t in enumerate(example)
                       if t in (tokenizer.fim_prefix_id, tokenizer.fim_suffix_id,
                                tokenizer.fim_middle_id, tokenizer.eot_id))


def test_the_loader_masks_match_its_rows_and_resume(small_dataset):
    tok, _, splits = load_dataset(small_dataset)

    def make(fim_rate=0.5):
        return PackedLoader(splits["train"], tok, 256, 4, seed=4, fim_rate=fim_rate,
                            spm_rate=0.5, repo_packing=True, track_prose=True)
    loader = make()
    rows, mask = loader.next_batch_and_prose()
    assert mask.shape == rows.shape and mask.dtype == bool
    assert 0.02 < mask.mean() < 0.9            # stdlib modules: docstrings and comments
    # Without FIM the mask of a row is its text's, its start carried from the row before.
    plain = make(fim_rate=0.0)
    stream: dict[int, list[int]] = {i: [] for i in range(4)}
    masks: dict[int, list[bool]] = {i: [] for i in range(4)}
    for _ in range(6):
        r, m = plain.next_batch_and_prose()
        for i in range(4):
            stream[i] += r[i].tolist()
            masks[i] += m[i].tolist()
    for i in range(4):
        assert masks[i] == row_prose(tok, stream[i]).tolist()
    state = loader.state()
    expected = loader.next_batch_and_prose()
    again = make()
    again.load_state(state)
    rows2, mask2 = again.next_batch_and_prose()
    assert (rows2 == expected[0]).all() and (mask2 == expected[1]).all()
    state["lanes"][0]["prose"] = "<<"
    with pytest.raises(DataError, match="prose state"):
        make().load_state(state)
    assert PackedLoader(splits["train"], tok, 64, 1, seed=0, fim_rate=0.5,
                        spm_rate=0.5).next_batch_and_prose()[1] is None


def test_weighted_loss_is_the_weighted_mean_of_token_losses():
    from model.config import ModelConfig
    from model.transformer import Transformer
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    num_key_value_heads=1, max_position_embeddings=32))
    loss = NextTokenLoss(model)
    batch = torch.randint(0, 64, (2, 17))
    per_token = loss(batch, reduction="none").reshape(2, 16)
    assert torch.allclose(loss(batch, weights=torch.ones(2, 16)), per_token.mean())
    weights = torch.ones(2, 16)
    weights[:, ::2] = 0.25
    expected = (per_token * weights).sum() / weights.sum()
    assert torch.allclose(loss(batch, weights=weights), expected)
    assert not torch.allclose(expected, per_token.mean())


def test_training_with_a_prose_weight_trains_otherwise_and_is_refused_below_zero(
        tmp_path, small_dataset):
    losses = {}
    for weight in (0.3, 1.0):
        cfg = tiny_config(small_dataset, tmp_path / str(weight), max_steps=10, eval_every=10,
                          checkpoint_every=10, prose_weight=weight, repo_packing="true")
        run = train(cfg, log=lambda s: None)
        losses[weight] = [m["train_loss"] for m in metrics(run) if "train_loss" in m]
    assert losses[0.3] and all(np.isfinite(x) for x in losses[0.3])
    assert losses[0.3] != losses[1.0]      # same data and seed: only the weights differ
    with pytest.raises(ValueError, match="--prose-weight"):
        train(tiny_config(small_dataset, tmp_path / "neg", prose_weight=-1), log=lambda s: None)


def test_evaluation_reports_bits_per_byte_of_code_and_of_prose_apart(random_model, tokenizer):
    from pathlib import Path

    from model.checkpoint import LoadedModel, ModelMeta
    from training.evaluate import bits_per_byte, code_and_prose_bits
    tiny = LoadedModel(random_model, tokenizer, random_model.config, ModelMeta(context_size=1024),
                       Path("."), torch.device("cpu"), torch.float32)
    texts = [SOURCE, SOURCE.replace("Store", "Cache")]
    split = code_and_prose_bits(tiny, texts)
    assert split["model"] == pytest.approx(bits_per_byte(tiny, texts), rel=1e-5)
    share = split["prose_share"]
    assert 0.1 < share < 0.6
    assert split["model"] == pytest.approx(split["code"] * (1 - share) + split["prose"] * share)
    # With uniform logits every token costs log2(vocab) bits: count the tokens by hand.
    vocab = tiny.config.vocab_size
    real = tiny.model

    class Uniform(torch.nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, vocab)
    tiny.model = Uniform()
    try:
        uniform = code_and_prose_bits(tiny, texts)
    finally:
        tiny.model = real
    tokens = {True: 0, False: 0}
    nbytes = {True: 0, False: 0}
    for text in texts:
        ids = tiny.tokenizer.encode(text)
        for t, flag in zip(ids, prose_flags(tiny.tokenizer, ids)[0], strict=True):
            tokens[flag] += 1
            nbytes[flag] += len(tiny.tokenizer.token_bytes(t))
    bits = np.log2(vocab)
    assert uniform["prose"] == pytest.approx(tokens[True] * bits / nbytes[True])
    assert uniform["code"] == pytest.approx(tokens[False] * bits / nbytes[False])
