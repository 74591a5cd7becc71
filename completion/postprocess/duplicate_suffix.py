"""Never insert what is already there: text that ends with the rest of the cursor's line
loses that ending (unless the completion opened a bracket or string the ending closes:
`len(x)` at `print(|)` ends with `)` but needs it), a completion that starts by typing the
rest of the line again is dropped (`f.read()` with the cursor before `f.` in `data = f.`
would read `f.read()f.`: the insertion is at the cursor and replaces nothing), and a
multi-line completion stops where it starts repeating the lines that follow the cursor."""

from __future__ import annotations

from completion.postprocess.context import CompletionContext
from completion.syntax import own_depths


def apply(text: str, ctx: CompletionContext) -> str | None:
    rest = ctx.rest_of_line.strip()
    first, _, more = text.partition("\n")
    first = first.rstrip()
    if rest and first.lstrip().startswith(rest):
        return None
    if rest and first.endswith(rest) and own_depths(first)[len(first) - len(rest)] == 0:
        text = first[:-len(rest)] + ("\n" + more if more else "")
    following = [line.strip() for line in ctx.next_lines if line.strip()][:3]
    if following and "\n" in text:
        lines = text.split("\n")
        for i in range(1, len(lines)):
            window = [line.strip() for line in lines[i:] if line.strip()][:len(following)]
            if lines[i].strip() and window == following[:len(window)] and len(window) >= \
                    min(2, len(following)):
                text = "\n".join(lines[:i]).rstrip()
                break
    return text if text.strip() else None
