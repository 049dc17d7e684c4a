"""Regression tests for the bugs found running LAIT on real crawls (issue 15), each on a WARC built here."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

import imagebert.lait.shard as shard_mod
from imagebert.cli import main
from imagebert.config_utils import ConfigError
from imagebert.lait import Scorer, load_lait_config, run_lait
from imagebert.lait.config import ImageConfig
from imagebert.lait.funnel import PAGE_STEPS
from imagebert.lait.images import ImageReject, decode_image
from imagebert.lait.scoring import FEATURES
from imagebert.lait.synthetic import ENGLISH, WarcBuilder, article, bomb_png, encode, photo

from .conftest import RULES, lait_config

CAPTIONS = [
    "A small sailing boat on a calm lake at sunrise",
    "An old stone bridge over a quiet river",
    "A red vintage car parked beside a brick wall",
    "Two horses grazing in a green field",
    "A lighthouse on a rocky coast under grey clouds",
    "A wooden cabin in a snowy forest",
]


def _page(w: WarcBuilder, i: int) -> None:
    fig = f"<figure><img src='/img/{i}.jpg' alt='{CAPTIONS[i % 6]} number {i}' width='400' height='400'></figure>"
    w.page(f"http://s.example.com/p/{i}", article(f"Post {i}", ENGLISH, fig))
    w.image(f"http://s.example.com/img/{i}.jpg", encode(photo(200 + i)))


def _warc(path: Path, pages: range, between: dict[int, bytes] | None = None) -> Path:
    with WarcBuilder(path) as w:
        for i in pages:
            if between and i in between:
                w.raw(between[i])
            _page(w, i)
    return path


def _cfg(*extra: str):
    return load_lait_config(None, [*RULES, *extra])


def _captions(out: Path) -> list[str]:
    return [json.loads(x)["caption"] for x in (out / "captions.jsonl").read_text().splitlines()]


def test_examples_per_reason_reaches_the_merged_report(local_run, corpus, tmp_path):
    out = tmp_path / "ex"
    run_lait([corpus["crawl"]], out, lait_config(corpus["mirror"], "run.examples_per_reason=10"), workers=1)
    report = json.loads((out / "funnel.json").read_text())
    shared = report["steps"]["aggregation"]["examples"]["shared_description"]
    assert len(shared) == 5  # all five, not capped at 3
    assert len({e["url"] for e in shared}) == 5  # five different pages, not one example repeated
    assert "shared_description" in (out / "funnel.md").read_text()


def test_rejects_file_lists_every_rejected_page(local_run):
    out, summary = local_run
    rows = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    counts = summary["funnel"].counts()
    assert len(rows) == sum(sum(counts[s]["dropped"].values()) for s in PAGE_STEPS if s in counts)
    assert all(set(r) == {"url", "step", "reason", "detail"} for r in rows)
    agg = [r for r in rows if r["step"] == "aggregation"]
    assert len(agg) == 7 and all(r["url"].startswith("http") for r in agg)
    assert {r["url"] for r in rows if r["reason"] == "racy"} == {"http://news.example.com/racy"}


def test_rerun_with_another_config_does_not_reuse_shards(tmp_path, capsys):
    warc = _warc(tmp_path / "a.warc.gz", range(4))
    out = tmp_path / "out"
    assert (
        main(
            [
                "lait",
                "run",
                str(warc),
                "--out",
                str(out),
                "--workers",
                "1",
                *sum((["--set", r] for r in RULES), []),
            ]
        )
        == 0
    )
    assert len(_captions(out)) == 4
    capsys.readouterr()
    args = [
        "lait",
        "run",
        str(warc),
        "--out",
        str(out),
        "--workers",
        "1",
        "--resume",
        "--set",
        "text.max_words=5",
    ]
    assert main(args + sum((["--set", r] for r in RULES), [])) == 0
    said = capsys.readouterr().out
    assert "(1 processed, 0 already done)" in said and "another config" in said
    assert _captions(out) == []  # every caption has more than 5 words: the new config really ran


def test_relative_inputs_work_from_a_worker_in_another_directory(tmp_path, monkeypatch):
    (tmp_path / "heldout").mkdir()
    _warc(tmp_path / "heldout" / "crawl-00000.warc.gz", range(3))
    monkeypatch.chdir(tmp_path)
    real = shard_mod._run_pages

    def elsewhere(ctx, shard, work_dir):  # what a Dask worker started in another folder sees
        os.chdir("/")
        return real(ctx, shard, work_dir)

    monkeypatch.setattr(shard_mod, "_run_pages", elsewhere)
    summary = run_lait(["heldout/crawl-00000.warc.gz"], "out", _cfg(), workers=1)
    assert summary["pairs"] == 3


def _members(data: bytes) -> list[int]:
    """Offsets of the gzip members of a Common-Crawl-layout file."""
    import zlib

    offs, pos = [], 0
    while pos < len(data):
        offs.append(pos)
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        d.decompress(data[pos:])
        pos = len(data) - len(d.unused_data)
    return offs


def test_whole_file_gzip_warc_is_read(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    per_record = _warc(plain / "a.warc.gz", range(5))
    raw = gzip.decompress(per_record.read_bytes())  # all members inflated = the plain WARC
    whole = tmp_path / "whole"
    whole.mkdir()
    (whole / "a.warc.gz").write_bytes(gzip.compress(raw))  # `gzip crawl.warc`: one stream
    a = run_lait([plain], tmp_path / "o1", _cfg(), workers=1)
    b = run_lait([whole], tmp_path / "o2", _cfg(), workers=1)
    assert a["pairs"] == b["pairs"] == 5 and not b["skipped_input"]
    assert _captions(tmp_path / "o1") == _captions(tmp_path / "o2")


def test_garbage_between_records_resynchronises_and_exits_non_zero(tmp_path, capsys):
    garbage = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    warc = _warc(tmp_path / "g.warc.gz", range(6), between={2: garbage})
    out = tmp_path / "out"
    code = main(
        [
            "lait",
            "run",
            str(warc),
            "--out",
            str(out),
            "--workers",
            "1",
            *sum((["--set", r] for r in RULES), []),
        ]
    )
    err = capsys.readouterr().err
    assert code == 3 and "WARNING: skipped 5000 unreadable bytes in 1 regions" in err
    assert len(_captions(out)) == 6  # the pages after the garbage are all there
    report = json.loads((out / "funnel.json").read_text())
    assert report["steps"]["pages"]["dropped"] == {"warc_unreadable": 1}
    assert "WARNINGS" in (out / "funnel.md").read_text()
    code = main(
        [
            "lait",
            "run",
            str(warc),
            "--out",
            str(out),
            "--workers",
            "1",
            "--resume",
            "--set",
            "run.strict_input=false",
        ]
        + sum((["--set", r] for r in RULES), [])
    )
    assert code == 0 and "skipped 5000" in capsys.readouterr().err


def test_plugin_names_are_checked_at_config_time(capsys):
    assert main(["lait", "show-config", "--set", "images.type_classifier=nonee"]) == 2
    assert "images.type_classifier" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="images.racy_classifier: cannot import 'no_such_pkg.mod'"):
        load_lait_config(None, ["images.racy_classifier=no_such_pkg.mod:factory"])
    with pytest.raises(ConfigError, match="scoring.model: file not found"):
        load_lait_config(None, ["scoring.model=missing.safetensors"])


def test_bomb_message_states_the_configured_limit():
    with pytest.raises(ImageReject) as exc:
        decode_image(bomb_png(8000), ImageConfig())  # 64M pixels: over 40M, under Pillow's 2x error limit
    assert exc.value.reason == "decompression_bomb"
    assert "40,000,000" in exc.value.detail and "80000000" not in exc.value.detail
    with pytest.raises(ImageReject) as exc:
        decode_image(bomb_png(9500), ImageConfig())  # 90M pixels: Pillow raises its own error first
    assert "90,250,000 pixels > images.max_pixels = 40,000,000" in exc.value.detail


def test_record_range_tasks_split_one_file_and_give_the_same_output(tmp_path):
    warc = _warc(tmp_path / "big.warc.gz", range(10))
    one = run_lait([warc], tmp_path / "one", _cfg(), workers=1)
    many = run_lait([warc], tmp_path / "many", _cfg("run.pages_per_task=3"), workers=1)
    assert one["shards"] == 1 and many["shards"] == 4
    assert (tmp_path / "one" / "captions.jsonl").read_bytes() == (
        tmp_path / "many" / "captions.jsonl"
    ).read_bytes()
    assert one["funnel"].counts() == many["funnel"].counts()


def test_scorer_threshold_from_the_file_is_used_and_mass_drops_are_loud(tmp_path):
    warc = _warc(tmp_path / "a.warc.gz", range(4))
    # a trained scorer whose scores all sit just under 0.5 (the 0.476-0.484), threshold stored at 0.47
    w = np.zeros(len(FEATURES))
    w[0] = -0.07
    Scorer(w, FEATURES, False, threshold=0.47).save(tmp_path / "s.safetensors")
    base = [
        "images.type_classifier=heuristic",
        f"scoring.model={tmp_path / 's.safetensors'}",
        "run.warn_min_in=1",
    ]
    kept = run_lait([warc], tmp_path / "o1", load_lait_config(None, base), workers=1)
    assert kept["pairs"] == 4 and not kept["warnings"]
    forced = run_lait(
        [warc], tmp_path / "o2", load_lait_config(None, [*base, "scoring.min_score=0.5"]), workers=1
    )
    assert forced["pairs"] == 0
    assert any("step 'scoring' dropped 4 of 4" in m for m in forced["warnings"])


def test_train_scorer_reports_auc_calibration_and_stores_the_threshold(tmp_path, capsys):
    from imagebert.lait.scorer_set import write_scorer_set

    labels = write_scorer_set(tmp_path / "set", rows=200, seed=1)
    out = tmp_path / "s.safetensors"
    assert main(["lait", "train-scorer", str(labels), "--out", str(out)]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["heldout"] == "cross-validated, 5 folds" and m["heldout_auc"] > 0.9
    assert 0 <= m["calibration"]["ece"] < 0.2 and m["calibration"]["bins"]
    assert m["target_reached"] and m["heldout_precision"] >= 0.9
    assert Scorer.load(out).threshold == pytest.approx(m["threshold"], abs=1e-6)


def test_shipped_scorer_is_the_default_and_separates_its_rules():
    s = Scorer.shipped()
    from imagebert.lait.scoring import text_image_features

    def score(text, source):
        return s.score(text_image_features(text, source, len(text.split()), 0.0, 640, 480))

    good = score("A brown dog lying on green grass in the garden", "alt")
    bad = score("Read more about our services and sign up for the newsletter", "surrounding")
    assert good >= s.threshold > bad
    assert 0.0 < s.threshold < 1.0 and s.info["target_reached"]


def test_lait_run_refuses_an_existing_output_folder_without_resume(corpus, tmp_path, capsys):
    """Issue 12 for LAIT: no silent mixing with an earlier run; --resume continues, --overwrite starts again."""
    from imagebert.cli import main

    out = tmp_path / "out"
    warc = corpus["crawl"] / "a.warc.gz"
    assert main(["lait", "run", str(warc), "--out", str(out), "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["lait", "run", str(warc), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and err.count("\n") == 1
    assert main(["lait", "run", str(warc), "--out", str(out), "--workers", "1", "--resume"]) == 0
    assert "already done" in capsys.readouterr().out
