from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imagebert.cli import main
from imagebert.config_utils import ConfigError
from imagebert.data import (
    FeatureStoreWriter,
    PairDataset,
    RegionRecord,
    load_dataset_spec,
    read_caption_list,
    read_karpathy_json,
)
from imagebert.errors import InputError

from .helpers import write_karpathy


def test_karpathy_flickr_and_coco(tmp_path):
    f30k = write_karpathy(tmp_path / "dataset_flickr30k.json", "flickr30k",
                          [("1000092795.jpg", "train", 5), ("10002456.jpg", "val", 5), ("1001.jpg", "test", 5)])  # fmt: skip
    caps = read_karpathy_json(f30k)
    assert len(caps) == 15 and caps[0].image_id == "1000092795" and caps[5].split == "val"
    assert caps[0].text == "A photo number 0 of image 1000092795.jpg." and caps[0].caption_id == "0"
    assert len({c.caption_id for c in caps}) == 15
    coco = write_karpathy(tmp_path / "dataset_coco.json", "coco",
                          [("COCO_val2014_000000391895.jpg", "restval", 5), ("COCO_train2014_000000000009.jpg", "train", 3)])  # fmt: skip
    caps = read_karpathy_json(coco, dataset="coco")
    assert (
        [c.image_id for c in caps[:1]] == ["391895"]
        and caps[0].split == "restval"
        and caps[-1].image_id == "9"
    )
    assert (
        read_karpathy_json(coco, dataset="coco", image_id="stem")[0].image_id == "COCO_val2014_000000391895"
    )
    assert read_karpathy_json(coco, dataset="coco", image_id="imgid")[-1].image_id == "1"


def test_karpathy_bad_json_and_fields(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [\n{"filename": "1.jpg",, }]}')
    with pytest.raises(InputError, match="unreadable JSON") as e:
        read_karpathy_json(bad)
    assert e.value.record == 2 and e.value.field == "json" and "bad.json" in str(e.value)
    nosplit = tmp_path / "nosplit.json"
    nosplit.write_text(json.dumps({"images": [{"filename": "1.jpg", "sentences": []}]}))
    with pytest.raises(InputError) as e:
        read_karpathy_json(nosplit)
    assert e.value.record == "images[0]" and e.value.field == "split"
    coco = write_karpathy(tmp_path / "c.json", "flickr30k", [("1.jpg", "train", 1)])
    with pytest.raises(InputError, match="cocoid"):
        read_karpathy_json(coco, dataset="coco")


def test_caption_lists(tmp_path):
    tsv = tmp_path / "cc.tsv"
    tsv.write_text("image_id\tcaption\n17\ta dog  on a beach\n18\tsunset\n")
    caps = read_caption_list(tsv)
    assert [(c.image_id, c.text, c.split) for c in caps] == [
        ("17", "a dog on a beach", "train"),
        ("18", "sunset", "train"),
    ]
    assert caps[0].caption_id == "cc:2"
    jl = tmp_path / "lait.jsonl"
    jl.write_text(json.dumps({"image_id": "a1", "caption": "x y", "split": "val"}) + "\n\n" +
                  json.dumps({"image_id": 5, "caption": "z"}) + "\n")  # fmt: skip
    caps = read_caption_list(jl)
    assert [(c.image_id, c.split) for c in caps] == [("a1", "val"), ("5", "train")]
    jl.write_text('{"image_id": "a", "caption": "ok"}\n{"image_id": "b", "caption": \n')
    with pytest.raises(InputError, match="unreadable JSON") as e:
        read_caption_list(jl)
    assert e.value.record == 2
    tsv.write_text("id\ttext\n1\tx\n")
    with pytest.raises(InputError, match="header"):
        read_caption_list(tsv)
    tsv.write_text("image_id\tcaption\n../x\tcap\n")
    with pytest.raises(InputError, match="path") as e:
        read_caption_list(tsv)
    assert e.value.record == 2


def _store(path, ids):
    with FeatureStoreWriter(path) as w:
        for i in ids:
            w.add(
                RegionRecord(
                    i, np.ones((3, 8), np.float32), np.ones((3, 4), np.float32) * [0, 0, 5, 5], 10, 10
                )
            )


def _yaml(tmp_path, body: str):
    (tmp_path / "ds.yaml").write_text(body)
    return tmp_path / "ds.yaml"


def test_dataset_spec_pairs_and_missing_images(tmp_path):
    write_karpathy(tmp_path / "dataset_flickr30k.json", "flickr30k",
                   [("1.jpg", "train", 2), ("2.jpg", "restval", 2), ("3.jpg", "test", 2), ("4.jpg", "train", 2)])  # fmt: skip
    _store(tmp_path / "feats", ["1", "2", "3"])
    cfg = _yaml(tmp_path, "feature_store: feats\ncaptions:\n  - path: dataset_flickr30k.json\n")
    with pytest.raises(InputError, match="not in the feature store.*first: 4"):
        PairDataset(load_dataset_spec(cfg), split="train")
    spec = load_dataset_spec(cfg, ["missing_images=skip", "rejects_path=out/rej.jsonl"])
    ds = PairDataset(spec, split="train")
    assert ds.image_ids == ["1", "2"] and len(ds) == 4 and ds.num_missing == 2
    cap, region = ds[2]
    assert cap.image_id == "2" and region.image_id == "2" and region.features.shape == (3, 8)
    assert ds.captions_of("1") == [0, 1] and ds.record("1").num_boxes == 3
    rejected = [json.loads(x) for x in (tmp_path / "out" / "rej.jsonl").read_text().splitlines()]
    assert [r["image_id"] for r in rejected] == ["4", "4"] and rejected[0]["reason"] == "missing_image"
    test = PairDataset(load_dataset_spec(cfg), split="test")
    assert test.image_ids == ["3"]
    only = PairDataset(load_dataset_spec(cfg, ["captions.0.splits=[restval]"]), split=None)
    assert only.image_ids == ["2"]


def test_dataset_spec_rejects_unknown_keys_and_cli_check(tmp_path, capsys):
    cfg = _yaml(
        tmp_path,
        "feature_store: feats\ncaptions:\n  - path: c.tsv\n    format: caption-list\n    splitz: [a]\n",
    )
    with pytest.raises(ConfigError, match="splitz"):
        load_dataset_spec(cfg)
    (tmp_path / "c.tsv").write_text("image_id\tcaption\n1\ta\n9\tb\n")
    _store(tmp_path / "feats", ["1"])
    cfg = _yaml(tmp_path, "feature_store: feats\ncaptions:\n  - path: c.tsv\n    format: caption-list\n")
    assert main(["datasets", "check", str(cfg)]) == 2
    assert "first: 9" in capsys.readouterr().err
    assert main(["datasets", "check", str(cfg), "--set", "missing_images=skip"]) == 0
    assert "1 captions of 1 images" in capsys.readouterr().out


def test_example_dataset_configs_load(tmp_path, monkeypatch):
    """The shipped dataset YAMLs are templates: data paths resolve against the working directory (root: "@cwd"),
    never into the installed package; a copy without `root` resolves against the copy's folder."""
    import imagebert

    folder = Path(imagebert.__file__).resolve().parent / "configs" / "datasets"
    configs = sorted(folder.glob("*.yaml"))
    assert len(configs) >= 3
    monkeypatch.chdir(tmp_path)
    for cfg in configs:
        for spec in (
            load_dataset_spec(cfg),
            load_dataset_spec(f"datasets/{cfg.stem}"),
            load_dataset_spec(cfg.stem),
        ):
            assert spec.captions and spec.resolve(spec.feature_store).is_absolute()
            assert spec.resolve(spec.captions[0].path).parent.parent == tmp_path / "data", cfg
            assert folder not in spec.resolve(spec.feature_store).parents
    copy = tmp_path / "mine" / "coco.yaml"
    copy.parent.mkdir()
    copy.write_text(
        "\n".join(x for x in (folder / "coco.yaml").read_text().splitlines() if not x.startswith("root:"))
    )
    spec = load_dataset_spec(copy)
    assert spec.resolve(spec.feature_store) == tmp_path / "mine" / "data" / "coco" / "features"
    # a path given on the command line resolves against the working directory, not the YAML's folder
    from imagebert.config_utils import absolutize_overrides
    from imagebert.data.dataset import PATH_KEYS

    spec = load_dataset_spec(copy, absolutize_overrides(["feature_store=feats"], PATH_KEYS))
    assert spec.resolve(spec.feature_store) == tmp_path / "feats"


def _ids(batch):
    return [(c.caption_id, c.image_id, r.image_id) for c, r in batch]


@pytest.mark.slow
def test_pair_dataset_in_spawned_workers(tmp_path):
    """Spawned workers (the DDP/macOS default) receive the dataset pickled and open the store themselves."""
    from torch.utils.data import DataLoader

    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"image_id": str(i % 7), "caption": f"c{i}"}) + "\n"
                                              for i in range(21)))  # fmt: skip
    _store(tmp_path / "feats", [str(i) for i in range(7)])
    ds = PairDataset(load_dataset_spec(_yaml(tmp_path, "feature_store: feats\ncaptions:\n"
                                                      "  - {path: c.jsonl, format: caption-list}\n")))  # fmt: skip
    assert ds[0][1].image_id == "0"  # the parent has the store open too
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="spawn", collate_fn=_ids)
    got = [x for batch in loader for x in batch]
    assert sorted(g[0] for g in got) == sorted(c.caption_id for c in ds.captions) and len(got) == 21
    assert all(cap_img == rec_img for _, cap_img, rec_img in got)
