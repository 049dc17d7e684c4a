"""End to end over the fixture crawl: exact funnel counts, exact surviving pairs, resumability, Dask parity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import imagebert.lait.shard as shard_mod
from imagebert.cli import main
from imagebert.lait import LaitRunError, run_lait

from .conftest import lait_config

EXPECTED_COUNTS = {
    "pages": {
        "in": 35,
        "kept": 26,
        "dropped": {
            "http_status": 1,
            "no_dominant_image": 1,
            "no_image": 1,
            "not_english": 2,
            "too_little_text": 1,
            "too_many_images": 1,
            "truncated_record": 1,
            "warc_unreadable": 1,
        },
    },
    "images": {
        "in": 26,
        "kept": 17,
        "dropped": {
            "animated": 1,
            "decompression_bomb": 1,
            "extreme_aspect": 1,
            "image_not_found": 1,
            "non_learnable": 1,
            "non_realistic": 1,
            "racy": 1,
            "too_small": 1,
            "undecodable": 1,
        },
    },
    "text_candidates": {
        "in": 37,
        "kept": 30,
        "dropped": {
            "banned_word": 1,
            "boilerplate": 1,
            "filename_like": 1,
            "high_oov": 1,
            "spam": 1,
            "too_long": 1,
            "too_short": 1,
        },
    },
    "text": {"in": 17, "kept": 16, "dropped": {"no_clean_text": 1}},
    "scoring": {"in": 16, "kept": 15, "dropped": {"low_score": 1}},
    "aggregation": {"in": 15, "kept": 8, "dropped": {"duplicate_image": 2, "shared_description": 5}},
}

EXPECTED_PAIRS = {
    ("http://garden.example.com/rose.jpg", "A white rose in a garden after the rain"),
    ("http://news.example.com/img/p2.jpg", "A cup of coffee on a wooden table in a small café"),
    ("http://shop.example.com/tea.jpg", "A glass teapot with green tea leaves on a tray"),
    ("http://news.example.com/img/p1.jpg", "A small sailing boat on a calm blue lake at sunrise"),
    ("http://blog.example.org/img/p12.jpg", "A red vintage car parked beside an old stone wall"),
    ("http://cdn.example.org/dog.jpg", "A brown dog lying on green grass in the garden"),
    ("http://static.example.net/m/p13.jpg", "Two horses in a snowy field"),
    ("file:///saved/pics/p11.jpg", "An old lighthouse on a rocky coast under grey clouds"),
}


def _pairs(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "captions.jsonl").read_text(encoding="utf-8").splitlines()]


def _snapshot(out: Path) -> tuple[str, dict, list[str]]:
    report = json.loads((out / "funnel.json").read_text())
    counts = {
        k: {"in": v["in"], "kept": v["kept"], "dropped": v["dropped"]} for k, v in report["steps"].items()
    }
    images = sorted(p.name for p in (out / "images").iterdir())
    return (out / "captions.jsonl").read_text(encoding="utf-8"), counts, images


def test_funnel_counts_exact(local_run):
    out, summary = local_run
    assert summary["funnel"].counts() == EXPECTED_COUNTS
    report = json.loads((out / "funnel.json").read_text())
    assert report["output"]["pairs"] == 8
    # every reject reason comes with at least one example
    for step in report["steps"].values():
        assert set(step["examples"]) == set(step["dropped"])
    md = (out / "funnel.md").read_text()
    assert "| images | 26 | 17 | 9 |" in md and "decompression_bomb" in md


def test_surviving_pairs_exact(local_run):
    out, _ = local_run
    rows = _pairs(out)
    assert {(r["url"], r["caption"]) for r in rows} == EXPECTED_PAIRS
    ids = [r["image_id"] for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for r in rows:
        assert 0.5 <= r["score"] <= 1.0
        with Image.open(out / "images" / f"{r['image_id']}.jpg") as im:
            assert im.format == "JPEG" and min(im.size) > 300
    assert sorted(p.stem for p in (out / "images").iterdir()) == sorted(ids)


def test_same_image_keeps_best_caption_and_generic_caption_dropped(local_run, corpus):
    out, _ = local_run
    report = json.loads((out / "funnel.json").read_text())
    dup = report["steps"]["aggregation"]["examples"]["duplicate_image"]
    dropped_texts = {e["text"] for e in dup}
    # p5 appears on three pages (twice byte-identical, once re-encoded): the best-scored alt text wins
    assert {(e["image_id"], e["text"]) for e in dup} == {
        (corpus["p5"], "Our dog resting on the grass"),  # same bytes, other page
        (corpus["p5_q60"], "A dog on the lawn"),  # other bytes, same picture (dHash)
    }
    assert dropped_texts == {"Our dog resting on the grass", "A dog on the lawn"}
    captions = {r["caption"] for r in _pairs(out)}
    assert "A brown dog lying on green grass in the garden" in captions
    assert [r["image_id"] for r in _pairs(out) if r["caption"].startswith("A brown dog")] == [corpus["p5"]]
    assert "A beautiful view of the city at night" not in captions


def test_rerun_skips_finished_shards(local_run, corpus):
    out, _ = local_run
    before = _snapshot(out)
    summary = run_lait([corpus["crawl"]], out, lait_config(corpus["mirror"]), workers=1)
    # the four WARCs are packed into one record-range task (run.pages_per_task), the HTML folder is another
    assert summary["processed"] == 0 and summary["skipped"] == summary["shards"] == 2
    assert _snapshot(out) == before


def test_crash_mid_shard_then_resume(local_run, corpus, tmp_path, monkeypatch):
    reference = _snapshot(local_run[0])
    out = tmp_path / "out"
    real = shard_mod._page_step
    calls = {"n": 0}

    def flaky(ctx, page):
        calls["n"] += 1
        if "blog.example.org/generic9" in page.url:  # half-way through b.warc.gz
            raise RuntimeError("simulated worker crash")
        return real(ctx, page)

    monkeypatch.setattr(shard_mod, "_page_step", flaky)
    with pytest.raises(LaitRunError, match="1 of 2 shards failed"):
        run_lait([corpus["crawl"]], out, lait_config(corpus["mirror"]), workers=1)
    shards = out / "work" / "shards"
    assert len([d for d in shards.iterdir() if not d.name.startswith(".")]) == 1
    assert not list(shards.glob(".tmp-*")) and not (out / "captions.jsonl").exists()
    (shards / ".tmp-b.warc.gz-killed").mkdir()  # what a SIGKILLed worker would leave behind
    monkeypatch.setattr(shard_mod, "_page_step", real)
    calls["n"] = 0
    summary = run_lait([corpus["crawl"]], out, lait_config(corpus["mirror"]), workers=1)
    assert summary["processed"] == 1 and summary["skipped"] == 1
    assert not list(shards.glob(".tmp-*"))
    assert _snapshot(out) == reference


def test_cli_run_and_bad_config(corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    warc = corpus["crawl"] / "a.warc.gz"
    assert main(["lait", "run", str(warc), "--out", str(out), "--workers", "1"]) == 0
    assert "pairs from 1 shards" in capsys.readouterr().out
    assert {r["caption"] for r in _pairs(out)} >= {"A small sailing boat on a calm blue lake at sunrise"}
    assert main(["lait", "run", str(warc), "--out", str(out), "--set", "text.max_wordz=3"]) == 2
    assert "text.max_wordz" in capsys.readouterr().err


@pytest.mark.slow
def test_dask_two_workers_same_output_even_when_a_worker_dies(local_run, corpus, tmp_path, monkeypatch):
    marker = tmp_path / "killed-once"
    monkeypatch.setenv("LAIT_TEST_KILL_MARKER", str(marker))
    out = tmp_path / "dask"
    # small record ranges: several tasks per WARC, spread over both workers
    cfg = lait_config(
        corpus["mirror"], "images.type_classifier=tests.lait.killer:factory", "run.pages_per_task=6"
    )
    summary = run_lait([corpus["crawl"]], out, cfg, workers=2)
    assert marker.exists()  # a worker really was killed in the middle of a shard
    assert summary["processed"] == summary["shards"] > 5
    assert not list((out / "work" / "shards").glob(".tmp-*"))
    assert _snapshot(out) == _snapshot(local_run[0])


def test_scheduler_address_runs_on_an_existing_cluster(local_run, corpus, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        out = tmp_path / "sched"
        summary = run_lait(
            [corpus["crawl"]], out, lait_config(corpus["mirror"]), scheduler=cluster.scheduler_address
        )
    assert summary["processed"] == 2
    assert _snapshot(out) == _snapshot(local_run[0])


def test_user_scorer_plugin(corpus, tmp_path):
    cfg = lait_config(corpus["mirror"], "scoring.model=tests.lait.killer:keyword_scorer")
    run_lait([corpus["crawl"] / "b.warc.gz"], tmp_path / "out", cfg, workers=1)
    assert [r["caption"] for r in _pairs(tmp_path / "out")] == [
        "A brown dog lying on green grass in the garden"
    ]


def test_output_reads_as_a_caption_list(local_run):
    from imagebert.data.captions import read_caption_list

    out, _ = local_run
    caps = read_caption_list(out / "captions.jsonl")
    assert [(c.image_id, c.text) for c in caps] == [(r["image_id"], r["caption"]) for r in _pairs(out)]
    assert all((out / "images" / f"{c.image_id}.jpg").is_file() for c in caps)
