"""Fixtures for the serve tests: a small demo corpus (real PNGs, `imagebert extract` features), a tiny ImageBERT
briefly trained with the contrastive and matching losses so rankings mean something, and an index built by the
real `imagebert index build` command."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

NUM_IMAGES = 16
TRAIN_STEPS = 100


@pytest.fixture(autouse=True)
def _one_thread():
    """Shared 2-core machine: one intra-op thread each (restored after the test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def serve_cli(argv: list[str]) -> int:
    """Run `imagebert index ...` / `imagebert serve ...` through a parser that holds only this area's commands
    (the lead registers imagebert.serve.cli in imagebert.cli.AREAS)."""
    from imagebert.serve.cli import register

    parser = argparse.ArgumentParser(prog="imagebert")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> dict:
    return make_demo(tmp_path_factory.mktemp("serve_demo"))


def make_demo(root: Path) -> dict:
    """Demo corpus (test split only) -> features on the true boxes -> dataset YAML."""
    import yaml

    from imagebert.demo.corpus import build_demo_corpus
    from imagebert.extraction.extract import ExtractionConfig, extract

    corpus = build_demo_corpus(root / "corpus", 0, 0, NUM_IMAGES, seed=3, image_size=96)
    rep = extract(
        corpus.images_dir,
        root / "features",
        ExtractionConfig(image_size=96, batch_size=16, progress=False),
        boxes=corpus.boxes_json,
    )
    assert rep.rejected == 0
    spec = {"name": "demo", "feature_store": str(root / "features"), "missing_images": "error",
            "captions": [{"path": str(corpus.karpathy_json), "format": "karpathy", "dataset": "flickr30k",
                          "image_id": "stem"}]}  # fmt: skip
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    return {
        "root": root,
        "yaml": root / "dataset.yaml",
        "images": corpus.images_dir,
        "store": root / "features",
    }


def _tiny_config(**kw):
    from imagebert.modeling import ImageBertConfig

    base = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=128, max_position_embeddings=96, visual_feature_dim=1280, num_object_classes=8,
                max_regions=20, max_text_tokens=40, itc_dim=32)  # fmt: skip
    base.update(kw)
    return ImageBertConfig(**base)


def _train(model, demo: dict, steps: int) -> None:
    """ITC (InfoNCE) + ITM (BCE against a shuffled caption) on the demo test split: enough to memorise it."""
    from imagebert.data.collate import PairCollator
    from imagebert.data.dataset import PairDataset, load_dataset_spec
    from imagebert.modeling import load_tokenizer
    from imagebert.modeling.heads import contrastive_loss

    ds = PairDataset(load_dataset_spec(demo["yaml"]), split="test")
    collator = PairCollator(load_tokenizer(), max_text_tokens=40, max_regions=20, feature_dim=1280,
                            truncate_regions=True)  # fmt: skip
    records = [ds.record(i) for i in ds.image_ids]
    by_img = {i: [ds.captions[c].text for c in ds.captions_of(i)] for i in ds.image_ids}
    regions = collator.encode_regions(records)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(steps):
        texts = [by_img[i][int(rng.integers(len(by_img[i])))] for i in ds.image_ids]
        enc = collator.encode_text(texts)
        t = model.encode_text(enc["input_ids"], enc["attention_mask"])
        v = model.encode_image(
            regions["region_features"], regions["region_locations"], regions["region_mask"]
        )
        loss = contrastive_loss(t, v, model.itc_logit_scale)
        perm = np.roll(np.arange(len(texts)), int(rng.integers(1, len(texts))))
        ids = torch.cat([enc["input_ids"], enc["input_ids"][perm]])
        am = torch.cat([enc["attention_mask"], enc["attention_mask"][perm]])
        rf, rl, rm = (torch.cat([regions[k], regions[k]]) for k in ("region_features", "region_locations",
                                                                      "region_mask"))  # fmt: skip
        labels = torch.cat([torch.ones(len(texts)), torch.zeros(len(texts))])
        loss = loss + model(ids, am, rf, rl, rm, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, demo) -> dict:
    """{"trained": folder with itc_trained_steps > 0, "untrained": the same architecture, never trained}."""
    return make_checkpoints(tmp_path_factory.mktemp("serve_ckpt"), demo)


def make_checkpoints(root: Path, demo: dict) -> dict:
    from imagebert.modeling import ImageBertForRetrieval, load_tokenizer

    tok = load_tokenizer()
    torch.manual_seed(0)
    model = ImageBertForRetrieval(_tiny_config())
    model.save_pretrained(root / "untrained")  # itc_trained_steps = 0
    tok.save_pretrained(root / "untrained")
    _train(model, demo, TRAIN_STEPS)
    model.config.itc_trained_steps = TRAIN_STEPS
    model.save_pretrained(root / "trained")
    tok.save_pretrained(root / "trained")
    return {"trained": root / "trained", "untrained": root / "untrained"}


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory, demo, checkpoints) -> Path:
    out = tmp_path_factory.mktemp("serve_index") / "index"
    rc = serve_cli(["index", "build", str(checkpoints["trained"]), "--dataset", str(demo["yaml"]),
                    "--split", "test", "--images", str(demo["images"]), "--out", str(out)])  # fmt: skip
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def server(index_dir, checkpoints):
    """The real app on a real uvicorn server on 127.0.0.1 (a background thread), fp32 for exact comparisons."""
    from imagebert.serve.service import Limits, ServerThread, load_service

    limits = Limits(max_upload_bytes=2 * 2**20)
    app, searcher = load_service(index_dir, checkpoints["trained"], precision="fp32", limits=limits,
                                 max_pixels=4_000_000)  # fmt: skip
    with ServerThread(app) as url:
        yield {"url": url, "searcher": searcher, "limits": limits}
    searcher.worker.close()
