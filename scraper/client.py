"""A polite, serial GitHub REST client that survives rate limits and flaky answers.

- Waits: `retry-after` first, else `x-ratelimit-reset` when the budget is spent, else
  exponential backoff with jitter. 403 is classified by its body: a rate limit (primary
  or secondary) is waited out; any other 403 is `Forbidden`. 429 is always a rate limit.
- 5xx, connection errors and malformed JSON are retried with backoff, then raised as
  `TransientError`; 404/410/451 raise `Gone`; 409 (empty repository) `Empty`; 422
  `Unprocessable` (the search API past 1,000 results).
- Budgets are tracked per identity and resource (`core`, `search`) from the
  `x-ratelimit-*` headers; each request goes out under the identity with the most
  budget left, and waits for the earliest reset when every identity is spent.
- ETags: GET answers are remembered with their ETag (in the corpus store) and sent back
  as `If-None-Match`; a 304 (which costs no budget) returns the remembered body.
- The clock is injectable so tests can simulate hours of waiting in no time.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import requests

from scraper.tokens import Redactor

log = logging.getLogger("scraper.client")
USER_AGENT = "codecomplete-scraper (+https://github.com/codecomplete)"


class Clock(Protocol):
    def time(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class RealClock:
    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


class GitHubError(Exception):
    """Base of the errors a request can end in; messages never contain a token."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Gone(GitHubError):
    """404, 410 or 451: the resource does not exist (any more) or is blocked."""


class Forbidden(GitHubError):
    """A 403 that is not a rate limit (access blocked, not accessible...)."""


class Empty(GitHubError):
    """409: the repository is empty."""


class Unprocessable(GitHubError):
    """422: for search, asking past the first 1,000 results."""


class TransientError(GitHubError):
    """Still failing after all retries (5xx, network, malformed JSON)."""


@dataclass
class Budget:
    remaining: int | None = None     # None: unknown yet
    reset: float = 0.0


@dataclass
class Identity:
    name: str
    token: str | None
    budgets: dict[str, Budget] = field(default_factory=dict)

    def budget(self, resource: str) -> Budget:
        return self.budgets.setdefault(resource, Budget())


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    url: str
    from_cache: bool = False

    def json(self) -> Any:
        return json.loads(self.body)

    def links(self) -> dict[str, str]:
        return parse_link_header(self.headers.get("link", ""))


def parse_link_header(value: str) -> dict[str, str]:
    """`<url>; rel="next", <url>; rel="last"` -> {"next": url, "last": url}."""
    out = {}
    for part in value.split(","):
        if ";" not in part:
            continue
        url, *params = part.split(";")
        for p in params:
            p = p.strip()
            if p.startswith("rel="):
                out[p[4:].strip('"')] = url.strip().strip("<>")
    return out


@dataclass(frozen=True)
class CachedPage:
    """A remembered answer: its ETag, `Link` header (pagination) and body."""

    etag: str
    link: str
    body: bytes


class EtagCache(Protocol):
    def etag(self, url: str) -> CachedPage | None: ...
    def save_etag(self, url: str, etag: str, body: bytes, link: str = "") -> None: ...


class GitHubClient:
    def __init__(self, api_url: str = "https://api.github.com", tokens: list[str] | None = None,
                 clock: Clock | None = None, etags: EtagCache | None = None,
                 max_retries: int = 6, backoff_base: float = 2.0, backoff_cap: float = 300.0,
                 min_interval: float = 0.0, rng: random.Random | None = None,
                 session: requests.Session | None = None):
        self.api_url = api_url.rstrip("/")
        self.clock = clock or RealClock()
        self.etags = etags
        self.max_retries, self.backoff_base, self.backoff_cap = max_retries, backoff_base, \
            backoff_cap
        self.min_interval = min_interval
        self.rng = rng or random.Random()
        self.session = session or requests.Session()
        self.session.headers.update({"User-Agent": USER_AGENT,
                                     "X-GitHub-Api-Version": "2022-11-28"})
        self.redactor = Redactor(tokens or [])
        self.identities = [Identity(f"token{i + 1}", t) for i, t in enumerate(tokens or [])] \
            or [Identity("anonymous", None)]
        self.requests_made = 0
        self.waited = 0.0
        self._last_request = 0.0

    # -- identities ------------------------------------------------------------------

    def resolve_identities(self) -> None:
        """Group tokens by the account they belong to: tokens of one account share a
        budget, so they become one identity (the first token is used)."""
        if self.identities[0].token is None:
            return
        merged: dict[str, Identity] = {}
        for ident in self.identities:
            try:
                login = self.get_json("/user", identity=ident, use_etag=False).get("login")
            except GitHubError as e:
                log.warning("%s: cannot read its account (%s); kept as its own identity",
                            ident.name, e)
                login = None
            key = login or ident.name
            if key in merged:
                log.info("%s belongs to %s like an earlier token; they share one budget",
                         ident.name, key)
                continue
            ident.name = key
            merged[key] = ident
        self.identities = list(merged.values())

    def remaining(self, resource: str = "core") -> int | None:
        known = [i.budget(resource).remaining for i in self.identities]
        return None if any(r is None for r in known) else sum(known)  # type: ignore[arg-type]

    def _other_has_budget(self, spent: Identity, resource: str) -> bool:
        now = self.clock.time()
        return any(i is not spent and (i.budget(resource).remaining != 0
                                       or i.budget(resource).reset <= now)
                   for i in self.identities)

    def _pick(self, resource: str) -> Identity:
        now = self.clock.time()
        best = None
        for ident in self.identities:
            b = ident.budget(resource)
            if b.remaining is None or b.remaining > 0 or b.reset <= now:
                left = float("inf") if b.remaining is None or b.reset <= now else b.remaining
                if best is None or left > best[0]:
                    best = (left, ident)
        if best:
            return best[1]
        soonest = min(self.identities, key=lambda i: i.budget(resource).reset)
        wait = soonest.budget(resource).reset - now + 1
        log.info("every identity has spent its %s budget; waiting %.0fs for the reset",
                 resource, wait)
        self._sleep(wait)
        return soonest

    # -- requests --------------------------------------------------------------------

    def url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return urljoin(self.api_url + "/", path_or_url.lstrip("/"))

    def get_json(self, path: str, params: dict[str, Any] | None = None,
                 identity: Identity | None = None, use_etag: bool = True) -> Any:
        resp = self.get(path, params=params, identity=identity, use_etag=use_etag)
        return self._decode(resp)

    def _decode(self, resp: Response) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise TransientError(f"malformed JSON from {self._safe(resp.url)}",
                                 resp.status) from None

    def get(self, path: str, params: dict[str, Any] | None = None, accept: str | None = None,
            identity: Identity | None = None, use_etag: bool = True, stream: bool = False,
            expect_json: bool = False) -> Response:
        """GET with retries; `stream=True` returns headers now and the body via
        `iter_body` (used for tarballs, which must be size-capped while downloading)."""
        url = self.url(path)
        if params:
            url = requests.Request("GET", url, params=params).prepare().url or url
        resource = "search" if urlsplit(url).path.startswith("/search/") else "core"
        attempt = 0
        while True:
            ident = identity or self._pick(resource)
            headers = {"Accept": accept or "application/vnd.github+json"}
            if ident.token:
                headers["Authorization"] = f"Bearer {ident.token}"
            cached = self.etags.etag(url) if (use_etag and self.etags and not stream) else None
            if cached:
                headers["If-None-Match"] = cached.etag
            self._pace()
            try:
                raw = self.session.get(url, headers=headers, timeout=60, stream=stream,
                                       allow_redirects=True)
            except requests.RequestException as e:
                attempt = self._retry_or_raise(attempt, f"network error on {self._safe(url)}: "
                                               f"{type(e).__name__}", None, url)
                continue
            self.requests_made += 1
            self._note_budget(ident, raw.headers, resource)
            status = raw.status_code
            if status == 304 and cached:
                raw.close()
                # Header names compared in lower case, as for a 200; the remembered Link
                # keeps pagination going when a 304 carries none.
                seen = _lower(raw.headers)
                if cached.link and "link" not in seen:
                    seen["link"] = cached.link
                return Response(200, seen, cached.body, url, from_cache=True)
            if 200 <= status < 300:
                if stream:
                    return _StreamResponse(status, _lower(raw.headers), b"", url, raw=raw)
                body = raw.content
                if expect_json:
                    try:
                        json.loads(body)
                    except ValueError:
                        attempt = self._retry_or_raise(
                            attempt, f"malformed JSON from {self._safe(url)}", status, url)
                        continue
                seen = _lower(raw.headers)
                etag = seen.get("etag")
                if etag and use_etag and self.etags:
                    self.etags.save_etag(url, etag, body, seen.get("link", ""))
                return Response(status, seen, body, url)
            body = raw.content if not stream else raw.raw.read(65536, decode_content=True)
            raw.close()
            wait = self._rate_limit_wait(status, raw.headers, body, attempt)
            primary = raw.headers.get("x-ratelimit-remaining") == "0"
            if wait is not None and primary and identity is None \
                    and self._other_has_budget(ident, resource):
                log.info("%s spent its %s budget; switching identity", ident.name, resource)
                continue
            if wait is not None:
                log.info("rate limited (%s) on %s; waiting %.0fs", status, self._safe(url), wait)
                self._sleep(wait)
                attempt += 1
                if attempt > self.max_retries * 4:
                    raise TransientError(f"still rate limited on {self._safe(url)} after "
                                         f"{attempt} waits", status)
                continue
            message = self._message(body)
            if status in (404, 410, 451):
                raise Gone(f"{status} for {self._safe(url)}: {message}", status)
            if status == 403:
                raise Forbidden(f"403 for {self._safe(url)}: {message}", status)
            if status == 409:
                raise Empty(f"409 for {self._safe(url)}: {message}", status)
            if status == 422:
                raise Unprocessable(f"422 for {self._safe(url)}: {message}", status)
            if status >= 500 or status == 408:
                attempt = self._retry_or_raise(attempt, f"{status} for {self._safe(url)}",
                                               status, url)
                continue
            raise GitHubError(f"unexpected {status} for {self._safe(url)}: {message}", status)

    def paginate(self, path: str, params: dict[str, Any] | None = None
                 ) -> Iterator[tuple[Any, str | None]]:
        """(page JSON, next page URL) following `Link: rel="next"`."""
        url: str | None = self.url(path)
        while url:
            resp = self.get(url, params=params, expect_json=True)
            params = None   # the next URL carries its own query
            nxt = resp.links().get("next")
            yield self._decode(resp), nxt
            url = nxt

    # -- helpers ---------------------------------------------------------------------

    def _pace(self) -> None:
        if self.min_interval:
            gap = self.clock.time() - self._last_request
            if gap < self.min_interval:
                self._sleep(self.min_interval - gap)
        self._last_request = self.clock.time()

    def _sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.waited += seconds
        self.clock.sleep(seconds)

    def _backoff(self, attempt: int) -> float:
        base = min(self.backoff_cap, self.backoff_base * 2 ** attempt)
        return base * (0.5 + self.rng.random() / 2)   # jitter: 50-100% of the step

    def _retry_or_raise(self, attempt: int, message: str, status: int | None, url: str) -> int:
        if attempt >= self.max_retries:
            raise TransientError(f"{message} (gave up after {attempt + 1} tries)", status)
        wait = self._backoff(attempt)
        log.info("%s; retrying in %.1fs", message, wait)
        self._sleep(wait)
        return attempt + 1

    def _note_budget(self, ident: Identity, headers: Any, default_resource: str) -> None:
        h = _lower(headers)
        if "x-ratelimit-remaining" not in h:
            return
        b = ident.budget(h.get("x-ratelimit-resource", default_resource))
        try:
            b.remaining = int(h["x-ratelimit-remaining"])
            b.reset = float(h.get("x-ratelimit-reset", b.reset))
        except ValueError:
            pass

    def _rate_limit_wait(self, status: int, headers: Any, body: bytes, attempt: int
                         ) -> float | None:
        """Seconds to wait when this answer is a rate limit, else None."""
        if status not in (403, 429):
            return None
        h = _lower(headers)
        message = self._message(body).lower()
        limited = status == 429 or h.get("x-ratelimit-remaining") == "0" \
            or "rate limit" in message or "abuse" in message
        if not limited:
            return None
        if "retry-after" in h:
            try:
                return float(h["retry-after"])
            except ValueError:
                pass
        if h.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in h:
            try:
                return max(1.0, float(h["x-ratelimit-reset"]) - self.clock.time() + 1)
            except ValueError:
                pass
        return max(60.0, self._backoff(attempt)) if "secondary" in message \
            else self._backoff(attempt)

    def _message(self, body: bytes) -> str:
        try:
            msg = json.loads(body).get("message", "")
        except (ValueError, AttributeError):
            msg = body[:200].decode("utf-8", "replace")
        return self.redactor.scrub(str(msg))[:200]

    def _safe(self, url: str) -> str:
        return self.redactor.scrub(url)


class _StreamResponse(Response):
    def __init__(self, status: int, headers: dict[str, str], body: bytes, url: str,
                 raw: requests.Response):
        super().__init__(status, headers, body, url)
        self.raw = raw

    def iter_body(self, chunk: int = 1 << 16) -> Iterator[bytes]:
        try:
            yield from self.raw.iter_content(chunk)
        finally:
            self.raw.close()


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in dict(headers).items()}

