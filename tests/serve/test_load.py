"""Many concurrent clients on loopback: bounded in count and time; no request fails, no answer mixed up."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.serve.http_util import post_json

CLIENTS = 32
REQUESTS_PER_CLIENT = 4
TIME_LIMIT_S = 120.0


@pytest.mark.slow
def test_concurrent_clients_get_their_own_answers(server):
    idx = server["searcher"].index
    url = server["url"]
    queries = [idx.captions[(7 * i) % idx.num_captions]["text"] + f" {i}" * (i % 3) for i in range(CLIENTS)]
    image_queries = [idx.image_ids[i % idx.num_images] for i in range(CLIENTS)]
    # the answers one client alone gets (sequential, no batching with anyone else)
    want_img = {
        q: post_json(url + "/search/images", {"query": q, "top_k": 4, "rerank": 6})[2] for q in queries
    }
    want_cap = {i: post_json(url + "/search/captions", {"image_id": i, "top_k": 3, "rerank": 6})[2]
                for i in set(image_queries)}  # fmt: skip
    batches_before = server["searcher"].worker.batches
    deadline = time.monotonic() + TIME_LIMIT_S

    def client(n: int) -> list[str]:
        problems = []
        for k in range(REQUESTS_PER_CLIENT):
            if time.monotonic() > deadline:
                problems.append(f"client {n}: out of time")
                break
            if (n + k) % 2:
                status, _, r = post_json(
                    url + "/search/images", {"query": queries[n], "top_k": 4, "rerank": 6}
                )
                want = want_img[queries[n]]
                if status != 200 or r["query"] != queries[n]:
                    problems.append(f"client {n}: {status} {r}")
                    continue
            else:
                status, _, r = post_json(url + "/search/captions",
                                         {"image_id": image_queries[n], "top_k": 3, "rerank": 6})  # fmt: skip
                want = want_cap[image_queries[n]]
                if status != 200 or r["query"]["image_id"] != image_queries[n]:
                    problems.append(f"client {n}: {status} {r}")
                    continue
            key = (
                "image_id"
                if "image_id" in r["results"][0] and "caption" not in r["results"][0]
                else "caption"
            )
            got = [(x[key], round(x["score"], 3)) for x in r["results"]]
            exp = [(x[key], round(x["score"], 3)) for x in want["results"]]
            if [g[0] for g in got] != [e[0] for e in exp] or any(
                abs(a[1] - b[1]) > 2e-3 for a, b in zip(got, exp, strict=True)
            ):
                problems.append(f"client {n}: answer differs from the lone answer: {got} vs {exp}")
        return problems

    t0 = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        problems = [p for ps in pool.map(client, range(CLIENTS)) for p in ps]
    elapsed = time.monotonic() - t0
    assert not problems, problems[:5]
    assert elapsed < TIME_LIMIT_S
    worker = server["searcher"].worker
    # concurrent requests shared forward passes: fewer model batches than model jobs (2 per request)
    assert worker.batches - batches_before < 2 * CLIENTS * REQUESTS_PER_CLIENT
    assert worker.largest_batch > 1
