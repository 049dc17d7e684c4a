"""The JSON API end to end on a real server over loopback, and every bad input of the issue."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import NUM_IMAGES
from tests.serve.http_util import post_file, post_json, request


def _png(size=(80, 60), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def test_health_and_page(server):
    status, _, h = request(server["url"] + "/health")
    assert status == 200 and h["status"] == "ok"
    assert h["images"] == NUM_IMAGES and h["captions"] == 5 * NUM_IMAGES and h["uploads"] is True
    assert h["precision"] == "fp32" and h["weights"] == "fp32"
    status, hdrs, page = request(server["url"] + "/")
    assert status == 200 and b'id="query"' in page
    assert b"http://" not in page and b"https://" not in page  # no outside resource
    status, _, js = request(server["url"] + "/static/app.js")
    assert status == 200 and b"/search/images" in js and b"https://" not in js


def test_text_search_reranks_then_falls_back_to_first_stage(server):
    idx = server["searcher"].index
    caption = idx.captions[7]
    status, _, r = post_json(
        server["url"] + "/search/images", {"query": caption["text"], "top_k": 8, "rerank": 5}
    )
    assert status == 200 and r["query"] == caption["text"] and r["reranked"] == 5
    stages = [x["stage"] for x in r["results"]]
    assert stages == ["cross-encoder"] * 5 + ["first-stage"] * 3
    cross = [x["score"] for x in r["results"][:5]]
    assert cross == sorted(cross, reverse=True)
    assert len({x["image_id"] for x in r["results"]}) == 8
    assert {"encode_query", "first_stage", "rerank", "total"} <= set(r["timings_ms"])
    first = r["results"][0]
    assert first["image_url"] == f"/images/{first['image_id']}" and first["boxes"]


def test_service_ranks_like_fast_mode(server):
    """The same candidates (first stage top n) and the same cross-encoder order as evaluate's fast mode."""
    from imagebert.retrieval.rerank import topk_candidates
    from imagebert.retrieval.scorers import Gallery, ModelPairScorer, first_stage_scores

    s = server["searcher"]
    idx, model, collator = s.index, s.worker.model, s.worker.collator
    first = first_stage_scores(idx.caption_emb, idx.image_emb)
    cand = topk_candidates(first, 6)
    g = Gallery(idx.caption_texts, idx.caption_image, idx.image_ids, idx.record)
    scorer = ModelPairScorer(model, collator, g, precision="fp32")
    for c in (0, 13, 42):
        cross = scorer.score_pairs(np.full(6, c), cand[c])
        want = [idx.image_ids[i] for i in cand[c][np.argsort(-cross, kind="stable")]]
        _, _, r = post_json(server["url"] + "/search/images", {"query": idx.captions[c]["text"], "top_k": 6,
                                                               "rerank": 6})  # fmt: skip
        assert [x["image_id"] for x in r["results"]] == want
        assert np.allclose([x["score"] for x in r["results"]], np.sort(cross)[::-1], atol=1e-4)


def test_int8_worker_reranks_with_an_int8_copy_and_embeds_with_the_models_weights(
    server, checkpoints, capsys
):
    """`serve --weights int8`: re-ranking scores from the int8 copy (close to fp32, not equal), query embeddings
    exactly the fp32 ones (they must match the index's), the model itself untouched, bf16 refused."""
    from imagebert.cli import main
    from imagebert.retrieval.scorers import Gallery, ModelPairScorer
    from imagebert.runtime.quantize import int8_linear_count
    from imagebert.serve.search import ModelWorker

    s = server["searcher"]
    idx, model, collator = s.index, s.worker.model, s.worker.collator
    worker = ModelWorker(model, collator, precision="fp32", weights="int8")
    try:
        assert worker.cross_model is not model and int8_linear_count(worker.cross_model) > 0
        assert int8_linear_count(model) == 0
        texts = [idx.captions[c]["text"] for c in (0, 13)]
        assert np.array_equal(worker.encode_texts(texts), s.worker.encode_texts(texts))
        images = list(range(6))
        records = [(i, idx.record(i)) for i in images]
        got, _ = worker.score_pairs(texts, records, np.repeat([0, 1], 6), np.tile(images, 2))
    finally:
        worker.close()
    g = Gallery(texts, np.zeros(2, np.int64), [idx.image_ids[i] for i in images], idx.record)
    want = ModelPairScorer(model, collator, g, precision="fp32").score_pairs(
        np.repeat([0, 1], 6), np.tile(images, 2)
    )
    assert not np.array_equal(got, want)
    assert np.abs(got - want).max() < 0.1 * max(1.0, np.abs(want).std())
    with pytest.raises(ValueError, match="fp32 activations"):
        ModelWorker(model, collator, precision="bf16", weights="int8")
    assert (
        main(
            [
                "serve",
                str(idx.path),
                "--checkpoint",
                str(checkpoints["trained"]),
                "--weights",
                "int8",
                "--precision",
                "bf16",
            ]
        )
        == 2
    )
    assert "--weights int8 runs in fp32 activations" in capsys.readouterr().err


def test_caption_search_by_id_and_by_upload(server, demo):
    idx = server["searcher"].index
    iid = idx.image_ids[3]
    status, _, r = post_json(server["url"] + "/search/captions", {"image_id": iid, "top_k": 5, "rerank": 10})
    assert status == 200 and r["query"]["image_id"] == iid and len(r["results"]) == 5
    assert all(x["stage"] == "cross-encoder" for x in r["results"])
    png = (demo["images"] / f"{iid}.png").read_bytes()
    status, _, u = post_file(server["url"] + "/search/captions", png, {"top_k": 5, "rerank": 10})
    assert status == 200, u
    assert u["query"]["upload"] and len(u["query"]["boxes"]) == 17  # whole image + 4 x 4 grid
    assert len(u["results"]) == 5 and "extract" in u["timings_ms"]
    status, hdrs, jpg = request(server["url"] + f"/images/{iid}")
    assert status == 200 and hdrs["content-type"] == "image/jpeg" and jpg[:2] == b"\xff\xd8"
    assert not any((server["searcher"].index.path / "uploads").iterdir())  # transient copy removed


BAD_JSON = [
    ({"query": ""}, 422, "query", "empty"),
    ({"query": "   "}, 422, "query", "empty"),
    ({"query": "a" * 501}, 422, "query", "over the limit"),
    ({"query": 5}, 422, "query", "must be a string"),
    ({}, 422, "query", "missing"),
    ({"query": "red", "top_k": 0}, 422, "top_k", "between"),
    ({"query": "red", "top_k": "many"}, 422, "top_k", "integer"),
    ({"query": "red", "rerank": 10_000}, 422, "rerank", "between"),
    ({"query": "red", "colour": "x"}, 422, "colour", "unknown field"),
]


@pytest.mark.parametrize("body,status,field,words", BAD_JSON)
def test_bad_text_queries_get_4xx_naming_the_field(server, body, status, field, words):
    got, _, r = post_json(server["url"] + "/search/images", body)
    assert got == status and r["field"] == field and words in r["error"]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b"\xff\xfe"])
def test_malformed_json_body(server, raw):
    status, _, r = request(
        server["url"] + "/search/images", "POST", raw, {"Content-Type": "application/json"}
    )
    assert status == 400 and ("JSON" in r["error"] or "empty" in r["error"])


def test_unknown_ids_and_paths_in_ids(server):
    url = server["url"]
    status, _, r = post_json(url + "/search/captions", {"image_id": "no_such_image"})
    assert status == 404 and "unknown image id" in r["error"] and r["field"] == "image_id"
    for bad in ("../../etc/passwd", "..", "a/b", "..\\x"):
        status, _, r = post_json(url + "/search/captions", {"image_id": bad})
        assert status == 400 and "path" in r["error"], (bad, r)
    status, _, r = request(url + "/images/..%2F..%2Fetc%2Fpasswd")
    assert status in (400, 404) and "error" in r
    status, _, r = request(url + "/images/%2E%2E")
    assert status == 400 and "path" in r["error"]
    status, _, r = request(url + "/images/nothing_here")
    assert status == 404 and "unknown image id" in r["error"]
    status, _, r = request(url + "/static/../index.py")
    assert status == 404 and "error" in r


def test_bad_uploads(server, tmp_path):
    url = server["url"] + "/search/captions"
    status, _, r = post_file(url, b"this is not an image at all")
    assert status == 400 and "not a recognised image format" in r["error"] and r["field"] == "file"
    png = _png((120, 90))
    status, _, r = post_file(url, png[: len(png) // 2])
    assert status == 400 and "not a usable image" in r["error"]
    bomb = io.BytesIO()
    Image.new("1", (3000, 3000)).save(bomb, "PNG")  # 9 MP, a few KB on the wire; the limit here is 4 MP
    assert len(bomb.getvalue()) < 50_000
    status, _, r = post_file(url, bomb.getvalue())
    assert status == 400 and "decompression bomb" in r["error"]
    big = b"\0" * (server["limits"].max_upload_bytes + 10)
    status, _, r = post_file(url, big)
    assert status == 413 and "limit" in r["error"]
    status, _, r = request(url, "POST", big, {"Content-Type": "image/png"})
    assert status == 413
    status, _, r = post_file(url, b"")
    assert status == 400 and "empty" in r["error"]
    status, _, r = request(url, "POST", b"--x\r\nbroken", {"Content-Type": "multipart/form-data"})
    assert status == 400 and "boundary" in r["error"]
    # the server keeps serving, and wrote nothing outside the index folder (uploads/ is empty again)
    status, _, h = request(server["url"] + "/health")
    assert status == 200 and h["status"] == "ok"
    assert not any((server["searcher"].index.path / "uploads").iterdir())


def test_unknown_route_and_method_are_json(server):
    status, _, r = request(server["url"] + "/nope")
    assert status == 404 and "no such page" in r["error"]
    status, _, r = request(server["url"] + "/search/images")
    assert status == 405 and "not allowed" in r["error"]
