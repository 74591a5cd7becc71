"""GitHub tokens: read from the environment or a file, never printed.

Sources, in order: `--token-file` (one token per line, `#` comments), `$GITHUB_TOKENS`
(comma or whitespace separated), `$GITHUB_TOKEN`. Duplicates are dropped. With no token
the scraper runs unauthenticated at GitHub's lower limits (60 core requests/h, 10
searches/min).

Budgets belong to *identities*, not tokens: several tokens of one account share one
5,000/h budget, so the client groups tokens by the account `/user` reports. (Pooling
other people's tokens to exceed the limits is against GitHub's terms; this tool only
spreads requests over the identities it was given.)

A `Redactor` replaces every known token in any text (log records, error messages) with
`***`; the client never puts a token anywhere but the Authorization header.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path


class TokenError(ValueError):
    """The token file cannot be read."""


def load_tokens(token_file: Path | None = None, env: dict[str, str] | None = None
                ) -> list[str]:
    env = os.environ if env is None else env
    found: list[str] = []
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TokenError(f"cannot read token file {token_file} "
                             f"({type(e).__name__}).") from None
        found += [line.split("#", 1)[0].strip() for line in text.splitlines()]
    found += re.split(r"[\s,]+", env.get("GITHUB_TOKENS", ""))
    found.append(env.get("GITHUB_TOKEN", "").strip())
    out: list[str] = []
    for t in found:
        if t and t not in out:
            out.append(t)
    return out


class Redactor(logging.Filter):
    """Scrubs tokens from strings and from every log record that passes through it."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = sorted((s for s in secrets if s), key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.scrub(record.getMessage())
        record.args = None
        return True


def install_redactor(secrets: list[str]) -> Redactor:
    """Attach a redactor to every handler of the root logger (and future records of the
    `scraper` logger), so no token can reach a log line."""
    red = Redactor(secrets)
    logging.getLogger("scraper").addFilter(red)
    for handler in logging.getLogger().handlers:
        handler.addFilter(red)
    return red
