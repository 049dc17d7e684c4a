"""The HTTP fetcher against a server on 127.0.0.1 only: caps, retries, timeouts, politeness, end to end."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imagebert.lait import load_lait_config, run_lait
from imagebert.lait.config import FetchConfig
from imagebert.lait.fetch import HttpFetcher
from imagebert.lait.synthetic import ENGLISH, WarcBuilder, article, encode, photo

IMAGE = encode(photo(31))


class _Handler(BaseHTTPRequestHandler):
    hits: Counter = Counter()
    starts: list = []
    inflight = 0
    max_inflight = 0
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _send(self, code: int, body: bytes, length: bool = True) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "image/jpeg")
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        cls = type(self)
        with cls.lock:
            cls.hits[self.path] += 1
            cls.starts.append(time.perf_counter())
            cls.inflight += 1
            cls.max_inflight = max(cls.max_inflight, cls.inflight)
        try:
            n = cls.hits[self.path]
            path = self.path.split("?")[0]
            if path == "/ok.jpg":
                time.sleep(0.05)
                self._send(200, IMAGE)
            elif path == "/flaky.jpg":
                self._send(503, b"busy") if n == 1 else self._send(200, IMAGE)
            elif path == "/big.jpg":
                self._send(200, b"\xff\xd8" + b"0" * 50000)
            elif path == "/big-nolength.jpg":
                self._send(200, b"\xff\xd8" + b"0" * 50000, length=False)
                self.close_connection = True
            elif path == "/slow.jpg":
                time.sleep(0.6)
                with contextlib.suppress(OSError):  # the client gave up: that is the point of this route
                    self._send(200, IMAGE)
            elif path == "/error.jpg":
                self._send(500, b"oops")
            else:
                self._send(404, b"no")
        finally:
            with cls.lock:
                cls.inflight -= 1


@pytest.fixture()
def server():
    _Handler.hits = Counter()
    _Handler.max_inflight = 0
    _Handler.starts = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_fetcher_caps_retries_and_timeouts(server):
    cfg = FetchConfig(
        enabled=True, timeout_s=0.3, max_bytes=40000, retries=1, backoff_s=0.01, per_host_delay_s=0.0
    )
    f = HttpFetcher(cfg)
    ok = f.fetch(f"{server}/ok.jpg")
    assert ok.data == IMAGE and ok.attempts == 1
    flaky = f.fetch(f"{server}/flaky.jpg")
    assert flaky.data == IMAGE and flaky.attempts == 2
    assert f.fetch(f"{server}/big.jpg").error == "too_many_bytes"
    assert f.fetch(f"{server}/big-nolength.jpg").error == "too_many_bytes"
    missing = f.fetch(f"{server}/missing.jpg")
    assert missing.error == "fetch_http_404" and missing.attempts == 1  # 4xx is not retried
    err = f.fetch(f"{server}/error.jpg")
    assert err.error == "fetch_http_500" and err.attempts == 2
    slow = f.fetch(f"{server}/slow.jpg")
    assert slow.error == "fetch_timeout" and slow.attempts == 2
    assert f.fetch("ftp://127.0.0.1/x.jpg").error == "fetch_bad_url"
    # bounded: never more requests than 1 + retries per URL
    assert _Handler.hits["/error.jpg"] == 2 and _Handler.hits["/missing.jpg"] == 1
    assert _Handler.hits["/big.jpg"] == 1


def test_fetcher_is_polite_per_host(server):
    cfg = FetchConfig(enabled=True, timeout_s=2, retries=0, max_concurrency=4, per_host_delay_s=0.1)
    urls = [f"{server}/ok.jpg?{i}" for i in range(4)]
    t0 = time.perf_counter()
    res = HttpFetcher(cfg).fetch_many(urls + urls[:1])  # duplicates are fetched once
    assert sorted(res) == sorted(urls) and all(r.data == IMAGE for r in res.values())
    assert time.perf_counter() - t0 >= 0.3  # three gaps of 0.1 s between four requests to one host
    starts = sorted(_Handler.starts)
    assert sum(_Handler.hits.values()) == 4
    assert min(b - a for a, b in zip(starts, starts[1:])) >= 0.09  # one at a time, 0.1 s apart


def test_pipeline_fetches_images_not_in_the_crawl(server, tmp_path):
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    with WarcBuilder(crawl / "f.warc.gz") as w:
        w.page(
            f"{server}/a", article("A", ENGLISH, "<img src='/ok.jpg' alt='A lone tree on a hill in autumn'>")
        )
        w.page(
            f"{server}/b",
            article("B", ENGLISH, "<img src='/missing.jpg' alt='A lone tree in the winter fog'>"),
        )
    cfg = load_lait_config(None, ["fetch.enabled=true", "fetch.per_host_delay_s=0", "fetch.retries=0"])
    summary = run_lait([crawl], tmp_path / "out", cfg, workers=1)
    rows = [json.loads(x) for x in (tmp_path / "out" / "captions.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in rows] == ["A lone tree on a hill in autumn"]
    assert summary["funnel"].counts()["images"]["dropped"] == {"fetch_http_404": 1}
