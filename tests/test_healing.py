"""Token healing on a model really trained here: `self.va` must become `self.value`."""

from model.generate import GenerationConfig, generate
from model.healing import allowed_tokens, heal_tail

PREFIX = ("class Node:\n    def __init__(self, value):\n        self.value = value\n\n"
          "    def get_value(self):\n        return self.")


def complete(tiny, text: str, heal: bool) -> str:
    tok = tiny.tokenizer
    ids = tok.encode(text)
    removed = b""
    if heal:
        ids, removed = heal_tail(tok, ids)
    r = generate(tiny.model, tok, ids, GenerationConfig(max_new_tokens=6), heal=removed)
    return r.text


def test_the_trained_model_knows_the_identifier(tiny):
    assert complete(tiny, PREFIX, heal=False).startswith("value")


def test_healing_completes_a_half_typed_identifier_the_plain_prompt_cannot(tiny):
    text = PREFIX + "va"
    assert not complete(tiny, text, heal=False).startswith("lue")
    assert complete(tiny, text, heal=True).startswith("lue")


def test_heal_tail_backs_off_partial_tokens_only(tokenizer):
    ids = tokenizer.encode("return self.va")
    kept, removed = heal_tail(tokenizer, ids)
    assert removed.endswith(b"va")
    assert tokenizer.decode(kept).encode() + removed == b"return self.va"
    # a prompt ending in a token that no longer token extends needs no healing
    ids = tokenizer.encode("x = (")
    if not any(len(tokenizer.token_bytes(i)) > 1
               for i in tokenizer.tokens_starting_with(tokenizer.token_bytes(ids[-1]))):
        assert heal_tail(tokenizer, ids) == (ids, b"")


def test_allowed_tokens_are_consistent_with_the_removed_text(tokenizer):
    for t in allowed_tokens(tokenizer, b"val"):
        b = tokenizer.token_bytes(t)
        assert b.startswith(b"val") or b"val".startswith(b)


def test_heal_tail_leaves_a_blank_lines_indentation_alone(tokenizer):
    ids = tokenizer.encode("def f(n):\n    ")
    # the vocabulary does have a longer indentation token this could be healed into...
    assert any(len(tokenizer.token_bytes(i)) > 5
               for i in tokenizer.tokens_starting_with(b"\n    "))
    # ...but the indentation the writer typed is kept exactly
    assert heal_tail(tokenizer, ids) == (ids, b"")
    # a bare newline is still healed: the model chooses the indentation
    assert heal_tail(tokenizer, tokenizer.encode("def f(n):\n"))[1].endswith(b"\n")
