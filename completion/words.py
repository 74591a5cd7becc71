"""What the server counts as a word: one definition for every module that asks.

A word character is what Python's `\\w` matches (letters and digits of any script, and
the underscore: the same set as `str.isalnum()` plus `_`), and an identifier is a word
that does not start with a digit, as in Python itself, so `größe` and `名前` are names too.
"""

from __future__ import annotations

import re

IDENTIFIER = re.compile(r"[^\W\d]\w*")
PARTIAL_IDENTIFIER = re.compile(r"[^\W\d]\w*$")       # the name being typed at a text's end
LEADING_WORD = re.compile(r"\w*")


def is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def inside_word(prefix: str, suffix: str) -> bool:
    """Word characters on both sides of the cursor."""
    return bool(prefix) and bool(suffix) and is_word_char(prefix[-1]) and \
        is_word_char(suffix[0])
