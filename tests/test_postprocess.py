"""Each post-processing filter with before/after cases, and the chain."""

from __future__ import annotations

import random

import pytest

from completion.postprocess import (
    POST_CACHE,
    PRE_CACHE,
    CompletionContext,
    auto_closed,
    block_scope,
    duplicate_suffix,
    min_length,
    open_string,
    repetition,
    run_chain,
    trailing_whitespace,
    whole_statements,
)
from completion.syntax import left_open, own_depths, window


def ctx(prefix: str, suffix: str = "", multiline: bool = False) -> CompletionContext:
    return CompletionContext(prefix, suffix, multiline)


BODY = "def f(x):\n    "


@pytest.mark.parametrize("text, c, want", [
    ("return x\n    y = 2", ctx("x = "), "return x"),                      # single line
    ("if x:\n        return 1\n    return 2\nprint(f(3))", ctx(BODY, multiline=True),
     "if x:\n        return 1\n    return 2"),                            # left the block
    ("return x\n\n    # still inside", ctx(BODY, multiline=True),
     "return x\n\n    # still inside"),
])
def test_block_scope(text, c, want):
    assert block_scope.apply(text, c) == want


def test_block_end_stop_function():
    stop = block_scope.block_end(4)
    assert stop("a = 1\n    b = 2\nc = 3") == len("a = 1\n    b = 2")
    assert stop("a = 1\n\n    b = 2") is None


@pytest.mark.parametrize("text, want", [
    ("x = 1\nx = 1\nx = 1\nx = 1", "x = 1"),
    # a line of code repeated goes at its second copy; data rows at their third
    ("self.x = x\n        self.y = y\n        self.y = y", "self.x = x\n        self.y = y"),
    ("next(it)\nnext(it)\nnext(it)", "next(it)"),
    ('group = parser.getgroup("g")\ngroup = parser.getgroup("g")', 'group = parser.getgroup("g")'),
    ("import os\nimport os\nx = 1", "import os"),
    ("a = a + b\na = a + b\nreturn a", "a = a + b"),
    ("    args: the arguments.\n    args: the arguments.", "    args: the arguments."),
    ("0,\n0,\n1,", "0,\n0,\n1,"),
    ("float,\nfloat,", "float,\nfloat,"),
    ("# --\n# --", "# --\n# --"),
    ("0,\n0,\n0,", "0,\n0,"),
    ("i += 1\ni += 2", "i += 1\ni += 2"),
    ("print(a)\nprint(b)", "print(a)\nprint(b)"),
    ("foo" + ")" * 20, "foo)"),
    ("abababababababab", None),
    ("eeeeeeeeeeeeeeeeeeeeeeee", None),
    # colours, masks and hashes are words of hex digits, not loops
    ('"#ffffff")', '"#ffffff")'),
    ('bg="#FFFFFF")', 'bg="#FFFFFF")'),
    ("mask = 0xffffffff", "mask = 0xffffffff"),
    # indentation, digit runs and decoration are not loops
    ("if self.x:\n            return 1", "if self.x:\n            return 1"),
    ("x = 1000000", "x = 1000000"),
    ("# ----------", "# ----------"),
    ("x = [0, 0, 0, 0, 0, 0, 0, 0, 0]", "x = [0, 0, 0, 0, 0, 0, 0, 0, 0]"),
    ("f(g(h(x))))", "f(g(h(x))))"),
    # loops of units longer than a few characters, as seen in held-out evaluation
    (" 1, True: 1, True: 1, True: 1, True: 1, True: 1, True:", None),
    ("d = {1: True, 1: True, 1: True, 1: True, 1: True, 1: True", "d = {1: True,"),
    ("x = ['update', 'update', 'update', 'update', 'update', 'update', 'update'",
     "x = ['update',"),
])
def test_repetition(text, want):
    assert repetition.apply(text, ctx("", multiline=True)) == want


def test_repetition_reads_the_first_line_from_the_cursors_line():
    # a body's first line starts after the indentation the user typed
    text = 'group = parser.getgroup("g")\n    group = parser.getgroup("g")\n    return'
    assert repetition.apply(text, ctx("def f(parser):\n    ", multiline=True)) == \
        'group = parser.getgroup("g")'
    assert repetition.apply("x = 1\n    x = 1", ctx("def f():\n        ",
                                                    multiline=True)) == "x = 1\n    x = 1"


@pytest.mark.parametrize("text, c, want", [
    ("value)", ctx("print(", ")"), "value"),                    # rest of line repeated
    ("a + b", ctx("x = ", "  # sum"), "a + b"),
    ("total = 0\n    for i in x:\n        total += i\n    return total",
     ctx(BODY, "\n    for i in x:\n        total += i\n", multiline=True), "total = 0"),
    (")", ctx("f(", ")"), None),
    ("len(x)", ctx("print(", ")"), "len(x)"),                   # its own bracket: kept
    ("len(x) + 1", ctx("print(", ") + 1"), "len(x) + 1"),
    ("x) + 1", ctx("print(", ") + 1"), "x"),
    ("f.read()", ctx("data = ", "f."), None),                  # would read f.read()f.
    ("f.read()", ctx("data = ", "f.\nx = 1"), None),
])
def test_duplicate_suffix(text, c, want):
    assert duplicate_suffix.apply(text, c) == want


@pytest.mark.parametrize("text, c, want", [
    ("x, y)", ctx("f(", ")"), "x, y"),
    ("name']", ctx("d['", "']"), "name"),                       # quote and bracket
    ("len(x)", ctx("print(", ")"), "len(x)"),                   # the completion's own
    ("len(x))", ctx("print(", ")"), "len(x)"),
    ('"a)"', ctx("f(", ")"), '"a)"'),                           # inside its own string
    ("x, y)", ctx("f(", ""), "x, y)"),                          # nothing to replace
    ("a]", ctx("f(", ")"), "a]"),                               # a different closer
])
def test_auto_closed(text, c, want):
    assert auto_closed.apply(text, c) == want


@pytest.mark.parametrize("text, multiline, want", [
    ("", False, None), ("   ", False, None), (":", False, None), ("x", False, "x"),
    ("pass", True, "pass"),
])
def test_min_length(text, multiline, want):
    assert min_length.apply(text, ctx("", multiline=multiline)) == want


@pytest.mark.parametrize("text, c, want", [
    ('"""\n    Return the n-th number.\n    Uses', ctx(BODY, multiline=True),
     '"""\n    Return the n-th number.\n    """'),           # a docstring alone: closed
    ('"""Return the n-th\n    number.\n\n    Parameters\n    ---', ctx(BODY, multiline=True),
     '"""Return the n-th\n    number.\n    """'),                # its first paragraph
    ('"""\n    Return the n-th', ctx(BODY, multiline=True), None),  # no complete line
    ('x = 1\n    s = """\n    abc\n    de', ctx(BODY, multiline=True), "x = 1"),
    ('if n < 2:\n        return n\n    msg = """too\n    big',
     ctx(BODY, multiline=True), "if n < 2:\n        return n"),
    ('"""Return n."""\n    return n', ctx(BODY, multiline=True),
     '"""Return n."""\n    return n'),                                   # closed: kept
    ('"hello', ctx("print("), '"hello'),                                 # single line
    ("ing\n    more", ctx('    s = """docstr', multiline=True), "ing\n    more"),
])
def test_open_string(text, c, want):
    assert open_string.apply(text, c) == want


@pytest.mark.parametrize("text, c, want", [
    # cut off by the token limit inside a call: back to the last complete statement
    ("x = 1\n    if x:\n        return f(a,\n                 b)\n    y = g(1,",
     ctx(BODY, multiline=True), "x = 1\n    if x:\n        return f(a,\n                 b)"),
    ("x = 1\n    for i in y:", ctx(BODY, multiline=True), "x = 1"),   # a header, no body
    ("x = 1\n    return x", ctx(BODY, multiline=True), "x = 1\n    return x"),  # whole
    ("if x:\n        y = (", ctx(BODY, multiline=True), "if x:"),    # none parses: line 1
    ("return (a for a in b", ctx(BODY, multiline=True), "return (a for a in b"),
    ("def f():\n    return 1\ndef g(", ctx("import os\n", multiline=True),
     "def f():\n    return 1"),                                       # at column 0
    ("y = 1\n\tz = (", ctx("def f(x):\n\t", multiline=True), "y = 1"),  # tabs
    # not the start of a statement, or not multi-line: left alone
    ("a,\n    b,", ctx("foo(\n    ", multiline=True), "a,\n    b,"),
    ("foo(\n        1", ctx("    x = ", multiline=True), "foo(\n        1"),
    ("f(a,\n    b", ctx(BODY), "f(a,\n    b"),
])
def test_whole_statements(text, c, want):
    assert whole_statements.apply(text, c) == want


def test_chain_shows_a_body_cut_by_the_token_limit_up_to_its_last_whole_line():
    body = '"""Sum."""\n    total = 0\n    for v in values:\n        total += v\n    return sum(t'
    shown = run_chain(body, ctx(BODY, multiline=True), PRE_CACHE + POST_CACHE)
    assert shown == '"""Sum."""\n    total = 0\n    for v in values:\n        total += v'


def test_trailing_whitespace():
    c = ctx(BODY, multiline=True)
    assert trailing_whitespace.apply(" x = 1   \n    y = 2  \n\n", c) == " x = 1\n    y = 2"
    assert trailing_whitespace.apply("  \n \n", c) is None


def test_chain_keeps_balanced_brackets_before_an_auto_closed_one():
    c = ctx("    print(", ")\n")
    assert run_chain("len(x))", c, PRE_CACHE + POST_CACHE) == "len(x)"
    assert run_chain("len(x)", c, PRE_CACHE + POST_CACHE) == "len(x)"


def test_left_open_agrees_with_own_depths_at_the_end():
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice("()[]{}ab '\"#\n") for _ in range(rng.randrange(40)))
        assert left_open(text) == bool(own_depths(window(text))[-1]), text
    assert left_open("foo(\n    ") and left_open('x = """doc\n') and not left_open("f(x)\n")


def test_own_depths():
    assert own_depths("len(x)") == [0, 0, 0, 0, 1, 1, 0]
    assert own_depths("x)") == [0, 0, 0]                        # closes the prefix's
    assert own_depths("'(' # (\n") == [0, 1, 1, 0, 0, 0, 0, 0, 0]


def test_chain_order_and_phases():
    c = ctx("    result = compute(", ")\n    return result\n")
    assert run_chain("a, b)\n    return result", c, PRE_CACHE + POST_CACHE) == "a, b"
    assert run_chain("))))))))))))", c, PRE_CACHE + POST_CACHE) is None
    assert PRE_CACHE and POST_CACHE and not set(PRE_CACHE) & set(POST_CACHE)


def test_generation_stops_where_the_block_filter_cuts_even_at_column_0(tiny):
    """At column 0 the filter ends a block at the next line that starts at column 0;
    generation's stop rule is the same one, so it never runs on to max_tokens there."""
    from completion.pipeline import prepare
    from completion.settings import EngineSettings

    p = prepare(tiny, "x = 1\n", "", EngineSettings(multiline="always"))
    assert p.ctx.multiline and p.ctx.indent == 0
    text = "y = 2\nz = 3\n"
    cut = p.stop_text(text)
    assert cut is not None and text[:cut] == block_scope.apply(text, p.ctx) == "y = 2"


def test_max_tokens_counts_the_suggestion_not_the_healed_token(tiny):
    """The healed token re-types the cursor's partial token: with max_tokens 1 the
    suggestion still gets one token of its own (it got only the rest of the healed one,
    such as the two quotes left of a docstring opener after `f.`)."""
    from completion.pipeline import generate_candidates, prepare
    from completion.settings import EngineSettings

    p = prepare(tiny, "        return self.va", "\n", EngineSettings(max_tokens=1))
    assert p.healed and p.config.max_new_tokens == 2
    r = generate_candidates(tiny, p).candidates[0]
    assert len(r.token_ids) <= 2 and tiny.tokenizer.decode(r.token_ids).startswith("va")
