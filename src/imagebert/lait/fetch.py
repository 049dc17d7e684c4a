"""A polite HTTP image fetcher: timeouts, a byte cap, bounded retries, a global concurrency limit and one request
at a time per host with a minimum delay between them. Standard library only, so workers need nothing extra."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from imagebert.lait.config import FetchConfig


@dataclass
class FetchResult:
    url: str
    data: bytes | None
    error: str | None = None  # reject reason when data is None
    attempts: int = 0


class _TooLarge(Exception):
    pass


class HttpFetcher:
    def __init__(self, cfg: FetchConfig) -> None:
        self.cfg = cfg
        self._host_locks: dict[str, threading.Lock] = {}
        self._last: dict[str, float] = {}
        self._guard = threading.Lock()

    def _host_lock(self, host: str) -> threading.Lock:
        with self._guard:
            return self._host_locks.setdefault(host, threading.Lock())

    def _get(self, url: str) -> bytes:
        req = urllib.request.Request(url, headers={"User-Agent": self.cfg.user_agent, "Accept": "image/*"})
        with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:  # noqa: S310 - scheme checked
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > self.cfg.max_bytes:
                raise _TooLarge(length)
            data = resp.read(self.cfg.max_bytes + 1)
            if len(data) > self.cfg.max_bytes:
                raise _TooLarge(str(len(data)))
            return data

    def fetch(self, url: str) -> FetchResult:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return FetchResult(url, None, "fetch_bad_url")
        host = parts.netloc
        attempts = 0
        error = "fetch_error"
        for attempt in range(self.cfg.retries + 1):
            attempts += 1
            with self._host_lock(host):
                wait = self._last.get(host, 0.0) + self.cfg.per_host_delay_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    return FetchResult(url, self._get(url), None, attempts)
                except _TooLarge:
                    return FetchResult(url, None, "too_many_bytes", attempts)
                except urllib.error.HTTPError as exc:
                    error = f"fetch_http_{exc.code}"
                    if exc.code < 500 and exc.code != 429:
                        return FetchResult(url, None, error, attempts)
                except TimeoutError:
                    error = "fetch_timeout"
                except urllib.error.URLError as exc:
                    error = "fetch_timeout" if isinstance(exc.reason, TimeoutError) else "fetch_error"
                except OSError:
                    error = "fetch_error"
                finally:
                    self._last[host] = time.monotonic()
            if attempt < self.cfg.retries:
                time.sleep(self.cfg.backoff_s * (2**attempt))
        return FetchResult(url, None, error, attempts)

    def fetch_many(self, urls: list[str]) -> dict[str, FetchResult]:
        unique = list(dict.fromkeys(urls))
        if not unique:
            return {}
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.max_concurrency)) as pool:
            return dict(zip(unique, pool.map(self.fetch, unique), strict=True))
