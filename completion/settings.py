"""The completion settings, with the type and range each one accepts.

The same names are used by the CLI, the LSP settings (`initializationOptions`,
`workspace/didChangeConfiguration`, optionally under a `codecomplete` key) and the docs.
A value of the wrong type or out of range is refused with one sentence naming the
setting, and the previous value stays: one odd setting must never break every request
(a `null` max_tokens, `candidates: 0` or `top_p: 2` would make each generation raise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from completion.cache_lm import WEIGHT


@dataclass
class EngineSettings:
    """Completion settings; see RULES for what each accepts."""

    temperature: float = 0.0       # 0: greedy, the rest of a line by beam search
    #                                (completion/pipeline.LINE_BEAMS)
    top_p: float = 0.95
    max_tokens: int = 64
    candidates: int = 1
    context_tokens: int = 768
    enable: bool = True
    comments: bool = True          # complete inside comments
    strings: bool = True           # complete inside strings and docstrings
    workspace_context: bool = False  # windows of the workspace's other files in the prompt
    #                                  (off: the shipped model does not use them yet, see
    #                                  docs/default-model.md, "Repository context")
    workspace_context_tokens: int = 384   # their token budget (see context_budget)
    rerank: bool = True            # rank names after a partly typed identifier (see
    #                                server/identifiers.py)
    seed: int | None = 0
    memory: bool = True            # project memory: the user's code (this document, open
    #                                buffers, the workspace) as counts blended into every
    #                                token (completion/cache_lm.py)
    memory_weight: float = WEIGHT  # the most weight one level of the memory gets (0-1]
    multiline: str = "auto"        # auto: several lines in an empty block body only;
    #                                never: always one line; always: also at a line's end
    python: str = ""               # the workspace's interpreter (or environment folder), for
    #                                the names of imported modules; "" finds it (see
    #                                server/interpreter.py)


MAX_CANDIDATES = 8
CONTEXT_SHARE = 0.4    # repository context gets at most this share of the window that is
#                        left after the tokens to generate; the file itself keeps the rest


def context_budget(settings: EngineSettings, model_context: int) -> int:
    """Tokens of repository context a request may use (0: none)."""
    if not settings.workspace_context:
        return 0
    room = int((model_context - settings.max_tokens) * CONTEXT_SHARE)
    return max(0, min(settings.workspace_context_tokens, room))

MIN_CONTEXT_TOKENS = 32


@dataclass(frozen=True)
class Rule:
    """What one setting accepts: a kind (bool, int, float or an optional int) and bounds.
    `max_of_context` bounds an integer by a share of the model's context window."""

    kind: str                      # bool, int, optional int, float, str or choice
    low: float | None = None
    high: float | None = None
    low_open: bool = False         # the low bound itself is not allowed
    max_of_context: float | None = None
    choices: tuple[str, ...] = ()  # the values a choice accepts

    def check(self, name: str, value: Any, model_context: int) -> Any:
        """The value to store, or ValueError with one sentence naming the setting."""
        if self.kind == "optional int" and value is None:
            return None
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"setting {name}={value!r} must be one of "
                                 f"{', '.join(self.choices)}")
            return value
        if self.kind == "str":
            if not isinstance(value, str):
                raise ValueError(f"setting {name}={value!r} must be a string")
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"setting {name}={value!r} must be true or false")
            return value
        number = (isinstance(value, int) and not isinstance(value, bool)) or \
            (isinstance(value, float) and math.isfinite(value))   # JSON's 1e999 is infinity
        if self.kind in ("int", "optional int"):
            if not number or value != int(value):
                raise ValueError(f"setting {name}={value!r} must be a whole number")
            value = int(value)
        elif not number:                               # NaN and infinities included
            raise ValueError(f"setting {name}={value!r} must be a number")
        high = self.high
        if self.max_of_context is not None:
            high = int(model_context * self.max_of_context)
        too_low = self.low is not None and (value <= self.low if self.low_open
                                            else value < self.low)
        if too_low or (high is not None and value > high):
            low = "" if self.low is None else f"{'above' if self.low_open else 'at least'} " \
                f"{self.low:g}"
            top = "" if high is None else f"at most {high:g}"
            raise ValueError(f"setting {name}={value!r} must be "
                             f"{' and '.join(p for p in (low, top) if p)}")
        return value


RULES: dict[str, Rule] = {
    "temperature": Rule("float", 0.0, 5.0),
    "top_p": Rule("float", 0.0, 1.0, low_open=True),
    "max_tokens": Rule("int", 1, max_of_context=0.5),   # the prompt keeps half the window
    "candidates": Rule("int", 1, MAX_CANDIDATES),
    "context_tokens": Rule("int", MIN_CONTEXT_TOKENS, 1 << 20),
    "enable": Rule("bool"),
    "comments": Rule("bool"),
    "strings": Rule("bool"),
    "workspace_context": Rule("bool"),
    "workspace_context_tokens": Rule("int", 0, 1 << 20),  # context_budget cuts it to the model
    "rerank": Rule("bool"),
    "seed": Rule("optional int", 0, 2**32 - 1),    # what every random generator takes
    "memory": Rule("bool"),
    "memory_weight": Rule("float", 0.0, 1.0, low_open=True),
    "multiline": Rule("choice", choices=("auto", "never", "always")),
    "python": Rule("str"),
}
assert set(RULES) == {f.name for f in fields(EngineSettings)}, "a setting without a rule"


def update_settings(settings: EngineSettings, options: Any, model_context: int) -> list[str]:
    """Copy the known keys of a settings object into `settings`, each only if valid;
    returns one sentence per refused value (unknown keys are ignored: an editor sends
    the settings of other extensions too)."""
    if not isinstance(options, dict):
        return []
    nested = options.get("codecomplete")
    if isinstance(nested, dict):
        options = nested
    problems = []
    for name, rule in RULES.items():
        if name not in options:
            continue
        try:
            setattr(settings, name, rule.check(name, options[name], model_context))
        except ValueError as e:
            problems.append(f"{e}; keeping {getattr(settings, name)!r}.")
    return problems
