import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.tokenizer import EOT, FIM_PREFIX, PSM, SPM, fim_layout, train_tokenizer
from training.fim import document_tokens, reassemble


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_round_trip_is_lossless_on_arbitrary_unicode(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["def", " ", "\n", "    ", "é", "🐍", "\t", "0", "12",
                                 "<|endoftext|>", "<fim_middle>", "'''", "\r\n", "\x00"]),
                max_size=40))
def test_round_trip_on_code_like_fragments(tokenizer, parts):
    text = "".join(parts)
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_token_text_in_code_is_plain_text(tokenizer):
    ids = tokenizer.encode(f"x = '{EOT}{FIM_PREFIX}'")
    assert not set(ids) & tokenizer.special_ids
    assert tokenizer.decode(ids) == f"x = '{EOT}{FIM_PREFIX}'"


def test_vocab_is_what_was_asked_and_specials_exist(tokenizer):
    assert tokenizer.vocab_size == 1024
    for i in (tokenizer.eot_id, tokenizer.fim_prefix_id, tokenizer.fim_middle_id,
              tokenizer.fim_suffix_id, tokenizer.fim_pad_id, tokenizer.file_sep_id):
        assert i in tokenizer.special_ids


def test_vocab_must_be_multiple_of_64():
    with pytest.raises(ValueError, match="multiple of 64"):
        train_tokenizer(["x = 1"], vocab_size=1000)


def test_digits_are_split(tokenizer):
    ids = tokenizer.encode("x = 12345")
    assert [tokenizer.decode([i]).strip() for i in ids][-5:] == list("12345")


def test_fim_layouts(tokenizer):
    p, s, m = tokenizer.encode("a = "), tokenizer.encode("\n"), tokenizer.encode("1")
    t = tokenizer
    assert fim_layout(t, p, s, PSM, m) == [t.fim_prefix_id, *p, t.fim_suffix_id, *s,
                                            t.fim_middle_id, *m]
    assert fim_layout(t, p, s, SPM, m) == [t.fim_prefix_id, t.fim_suffix_id, *s,
                                            t.fim_middle_id, *p, *m]
    with pytest.raises(ValueError, match="unknown FIM order"):
        fim_layout(t, p, s, "xyz")


def test_fim_examples_reassemble_to_the_document(tokenizer, corpus):
    rng = random.Random(0)
    kinds = set()
    for text in corpus[:40]:
        for _ in range(3):
            ids = document_tokens(tokenizer, text, rng, fim_rate=0.7, spm_rate=0.5)
            assert ids[-1] == tokenizer.eot_id
            kinds.add((ids[0] == tokenizer.fim_prefix_id, ids[1] == tokenizer.fim_suffix_id))
            assert reassemble(tokenizer, ids) == text
    assert kinds == {(False, False), (True, False), (True, True)}  # plain, PSM and SPM seen
