"""Small models loop: the same line again and again, or the same few words. Cut the
completion where a line repeats right after itself, unless the line is data (a row of
literals or names, a comment, punctuation: `0,`, `float,`, `# ---`, which then goes at its
third copy), or where a short unit of tokens starts repeating, and drop the completion if
the loop is all there is.

Why so strict: in this project's corpus (3.9M lines of Python) a line of code repeats
the line before it 394 times, about once in 10,000 lines (`print(file=self.stream)`,
`warnings.warn('uw')`). Of 480 function bodies sampled from the default models
(`training.evaluate`), 6 repeated a line right after itself, and each was a loop
(`group.set(group)`, `a = a + b`, `path = os.path.join(path, path)` twice). When a
repeat was meant, the user still gets its first copy.

Loops are found on tokens, not characters: whitespace is no token, so indentation is never
a loop (an indented method body is not "six spaces repeated"); a number is one token
(`1000000`), and a run of one decoration character is one token (`# ----------`). A unit of
tokens counts as looping only when it names something (an identifier or keyword: `1, True:`
again and again, `'update', 'update', ...`) or is one bracket or punctuation character
repeated; rows of literals such as `0, 0, 0, 0, 0, 0` are data, not loops.
"""

from __future__ import annotations

import ast
import re

from completion.postprocess.context import CompletionContext
from completion.words import IDENTIFIER

# A word (identifier or number), a run of one decoration character, or one other character.
TOKEN = re.compile(r"\w+|([-=*#~_+.<>/\\|^])\1*|[^\w\s]")
MAX_UNIT = 16                      # longest repeating unit looked for, in tokens
MIN_REPEATS = {1: 8, 2: 6}         # a unit of this many tokens loops at this many repeats
MIN_REPEATS_LONGER = 5             # ... and longer units at this many
REPEATED_WORD = re.compile(r"([^\W\d_]{1,4}?)\1{5,}")   # `abababababab` inside one word
HEX_WORD = re.compile(r"[0-9a-fA-F]{3,8}")   # a colour (`#fff`, `#ffffff`) is no loop


def apply(text: str, ctx: CompletionContext) -> str | None:
    lines = text.split("\n")
    # The first line starts at the cursor: compare it as the user's line will read.
    whole = [ctx.current_line + lines[0], *lines[1:]]
    for i in range(1, len(lines)):
        if not whole[i].strip() or whole[i] != whole[i - 1]:
            continue
        if not data_row(whole[i]) or (i >= 2 and whole[i] == whole[i - 2]):
            text = "\n".join(lines[:i])
            break
    cut = loop_start(text)
    if cut is not None:
        start, unit_end = cut
        if not text[:start].strip():
            return None                         # nothing but the loop
        text = text[:unit_end]
    return text if text.strip() else None


def data_row(line: str) -> bool:
    """Whether `line` may stand twice in a row: a comment, a line without letters (`1 2 3`,
    `)`), or an expression statement without call, await or yield (rows of a table or
    a tuple: `0,`, `'\\ufffe'`, `float,`). Statements and calls are code, not data."""
    text = line.strip()
    if text.startswith("#") or not any(c.isalpha() for c in text):
        return True
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return (len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr)
            and not any(isinstance(n, EFFECTS) for n in ast.walk(tree)))


EFFECTS = (ast.Call, ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)


def loop_start(text: str) -> tuple[int, int] | None:
    """(where the first looping unit starts, where it ends) in `text`, or None."""
    tokens = [(m.start(), m.end(), m.group()) for m in TOKEN.finditer(text)]
    words = [t[2] for t in tokens]
    for i in range(len(words)):
        m = REPEATED_WORD.fullmatch(words[i])
        if m and not HEX_WORD.fullmatch(words[i]):
            return tokens[i][0], tokens[i][0] + len(m.group(1))
        for k in range(1, min(MAX_UNIT, (len(words) - i) // 2) + 1):
            unit = words[i:i + k]
            if k > 1 and not any(IDENTIFIER.fullmatch(w) for w in unit):
                continue
            if k == 1 and (IDENTIFIER.fullmatch(unit[0]) or unit[0][0].isdigit()):
                continue                        # one word again: rare, and often intended
            need = MIN_REPEATS.get(k, MIN_REPEATS_LONGER)
            if len(words) - i < need * k:
                continue
            if all(words[i + j * k:i + (j + 1) * k] == unit for j in range(1, need)):
                return tokens[i][0], tokens[i + k - 1][1]
    return None
