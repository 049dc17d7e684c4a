"""Your own captions in the Karpathy layout, end to end through the CLI at tiny size: an LXMERT TSV imported into a
store, a dataset YAML with `dataset: karpathy`, a few pre-training steps from a shipped config name, evaluate."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest

from imagebert.cli import main
from imagebert.data import read_karpathy_json

from .data.helpers import LXMERT_FIELDS, lxmert_row, make_image, write_tsv

WORDS = ["red", "blue", "dog", "cat", "car", "tree", "boat", "bird"]


def _karpathy(path, names_and_splits):
    """A custom Karpathy-layout file; the last image has no file name (its id is then `imgid`)."""
    images = []
    for imgid, (name, split) in enumerate(names_and_splits):
        k = int(name.removeprefix("pic").removesuffix(".jpg")) if name else imgid
        sents = [
            {"raw": f"a {WORDS[k % 8]} {WORDS[(k + j) % 8]} photo", "sentid": 10 * imgid + j}
            for j in range(2)
        ]
        entry = {"imgid": imgid, "split": split, "sentences": sents}
        if name:
            entry["filename"] = name
        images.append(entry)
    path.write_text(json.dumps({"images": images}), encoding="utf-8")
    return path


def test_generic_karpathy_ids(tmp_path):
    f = _karpathy(tmp_path / "mine.json", [("pic1.jpg", "train"), (None, "test")])
    caps = read_karpathy_json(f, "karpathy")
    assert [c.image_id for c in caps] == ["pic1", "pic1", "1", "1"]
    assert {c.split for c in caps} == {"train", "test"}
    with pytest.raises(ValueError, match="karpathy"):
        read_karpathy_json(f, "flickr31k")


@pytest.mark.slow
def test_custom_karpathy_captions_through_the_cli(tmp_path, tiny_bert_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)
    names = [(f"pic{i}.jpg", "train") for i in range(8)] + [(f"pic{i}.jpg", "test") for i in range(8, 11)]
    names.append((None, "test"))  # image id "11" from imgid
    imgs = [make_image(f"pic{i}", n=5, d=16, seed=i) for i in range(11)] + [
        make_image("11", n=5, d=16, seed=11)
    ]
    write_tsv(tmp_path / "feats.tsv", [lxmert_row(img) for img in imgs], LXMERT_FIELDS)
    assert main(["features", "import", "--format", "lxmert-tsv", "feats.tsv", "--out", "store"]) == 0
    assert "imported 12 images" in capsys.readouterr().out

    data = tmp_path / "mydata"
    data.mkdir()
    _karpathy(data / "captions.json", names)
    # relative paths in the YAML resolve against its folder: ../store is tmp_path/store
    (data / "mine.yaml").write_text(
        "name: mine\nfeature_store: ../store\ncaptions:\n  - path: captions.json\n    format: karpathy\n"
        "    dataset: karpathy\n",
        encoding="utf-8",
    )
    assert main(["datasets", "check", "mydata/mine.yaml", "--split", "test"]) == 0
    assert "8 captions of 4 images" in capsys.readouterr().out

    argv = ["pretrain", "pretrain/demo_cpu", "--init-from-bert", str(tiny_bert_path), "--out", "run",
            "--set", "stages.0.datasets=[mydata/mine.yaml]", "--set", "stages.0.steps=2",  # cwd-relative
            "--training.batch-size", "4", "--training.precision", "fp32", "--training.log-every", "1",
            "--no-training.progress-bar", "--training.checkpoint-every", "0", "--threads", "1",
            "--set", "model.max_regions=8", "--set", "model.max_text_tokens=16"]  # fmt: skip
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # tensorboard is optional
    caplog.set_level(logging.INFO)
    assert main(argv) == 0, capsys.readouterr().err
    assert (
        caplog.text.count("tensorboard is not installed") == 1
        and not (tmp_path / "run" / "1-demo" / "tb").exists()
    )
    out = capsys.readouterr().out
    final = out.strip().splitlines()[-1].removeprefix("final checkpoint: ")
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "1-demo" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]  # fmt: skip
    assert steps and steps[-1] == 2

    assert main(["evaluate", "--checkpoint", final, "--dataset", "mydata/mine.yaml", "--protocol", "flickr1k",
                 "--precision", "fp32", "--batch-size", "32", "--out", "eval"]) == 0  # fmt: skip
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    # the test split: 3 named images + the one identified by imgid, 2 captions each
    assert (report["num_images"], report["num_captions"], report["split"]) == (4, 8, "test")
    assert report["dataset"] == str(data / "mine.yaml")  # the cwd-relative --dataset, made absolute
    assert "flickr1k" in report["results"]
    # the speed levers as flags: bf16-resident weights score the same pairs to bf16 accuracy
    assert main(["evaluate", "--checkpoint", final, "--dataset", "mydata/mine.yaml", "--protocol", "flickr1k",
                 "--precision", "bf16", "--weights", "bf16", "--compile", "off", "--batch-size", "32",
                 "--out", "eval_bf16"]) == 0  # fmt: skip
    fp32, bf16 = (
        np.load(next((tmp_path / d / "score_cache").rglob("scores.npy"))) for d in ("eval", "eval_bf16")
    )
    assert fp32.shape == bf16.shape == (8, 4) and np.abs(fp32 - bf16).max() < 0.05 * max(
        1.0, np.abs(fp32).max()
    )
    # int8 weights (CPU, fp32 activations) through the same flag; their cache is their own, not fp32's
    assert main(["evaluate", "--checkpoint", final, "--dataset", "mydata/mine.yaml", "--protocol", "flickr1k",
                 "--weights", "int8", "--batch-size", "32", "--out", "eval_int8"]) == 0  # fmt: skip
    int8 = np.load(next((tmp_path / "eval_int8" / "score_cache").rglob("scores.npy")))
    assert int8.shape == (8, 4) and not np.array_equal(int8, fp32)
    assert np.abs(fp32 - int8).max() < 0.1 * max(1.0, np.abs(fp32).max())
    # calibrated int8 (torchao, compiled stack) through the same flag
    assert main(["evaluate", "--checkpoint", final, "--dataset", "mydata/mine.yaml", "--protocol", "flickr1k",
                 "--weights", "int8-static", "--batch-size", "32", "--out", "eval_int8_static"]) == 0  # fmt: skip
    static = np.load(next((tmp_path / "eval_int8_static" / "score_cache").rglob("scores.npy")))
    assert static.shape == (8, 4) and not np.array_equal(static, fp32)
    assert np.abs(fp32 - static).max() < 0.1 * max(1.0, np.abs(fp32).max())
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", final, "--dataset", "mydata/mine.yaml", "--weights", "int8",
                 "--precision", "bf16"]) == 2  # fmt: skip
    assert "--weights int8 runs in fp32 activations" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", final, "--dataset", "mydata/mine.yaml",
                 "--int8-shapes", "static"]) == 2  # fmt: skip
    assert "--int8-shapes static applies to --weights int8-static only" in capsys.readouterr().err
    # a typo in the generic layout's settings is caught by name before any work
    (data / "bad.yaml").write_text(
        (data / "mine.yaml").read_text().replace("image_id", "x") + "    imageid: stem\n"
    )
    assert main(["datasets", "check", "mydata/bad.yaml"]) == 2
    assert "imageid" in capsys.readouterr().err
