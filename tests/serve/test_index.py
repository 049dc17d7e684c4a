"""`imagebert index build|add`: the refusal of untrained projections, what the index holds, exact search."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.serve.conftest import NUM_IMAGES, serve_cli


def test_registration_adds_index_and_serve_commands():
    import argparse

    from imagebert.serve.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    from imagebert.config_utils import load_command_config
    from imagebert.serve.cli import IndexBuildSettings, ServeSettings

    args = parser.parse_args(["index", "build", "CKPT", "--dataset", "d.yaml", "--out", "I"])
    # settings come from the dataclass the flags are made from
    s = load_command_config(IndexBuildSettings, args)
    assert args.func.__name__ == "run_build" and s.source.split == "test" and s.backend == "auto"
    args = parser.parse_args(["serve", "I", "--checkpoint", "C"])
    s = load_command_config(ServeSettings, args)
    assert args.func.__name__ == "run_serve" and s.host == "127.0.0.1" and s.checkpoint.endswith("C")


def test_itc_rule_reads_itc_trained_steps():
    from types import SimpleNamespace

    from imagebert.serve.index import itc_projections_trained

    assert itc_projections_trained(SimpleNamespace(itc_trained_steps=3))
    assert not itc_projections_trained(SimpleNamespace(itc_trained_steps=0))
    assert not itc_projections_trained(SimpleNamespace())


def _user_error(capsys, argv: list[str]) -> str:
    """Run `imagebert ...` through the real entry point: a user error is exit 2 and one line, no traceback."""
    from imagebert.cli import main

    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("imagebert")]  # (HF's loading bars aside)
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"imagebert {argv[0]}: error: ")
    return lines[0]


def test_untrained_checkpoint_is_refused_with_the_fix(tmp_path, demo, checkpoints, capsys):
    out = tmp_path / "index"
    msg = _user_error(capsys, ["index", "build", str(checkpoints["untrained"]), "--dataset", str(demo["yaml"]),
                               "--out", str(out)])  # fmt: skip
    assert "contrastive (ITC) projections" in msg and "never trained" in msg
    assert "task_itc" in msg and "loss.itc" in msg
    assert not (out / "index.json").exists()


def test_index_holds_embeddings_ids_captions_thumbnails_and_fingerprint(index_dir, demo, checkpoints):
    from imagebert.data.dataset import PairDataset, load_dataset_spec
    from imagebert.retrieval.evaluate import gallery_from_dataset
    from imagebert.serve.index import GalleryIndex, checkpoint_fingerprint

    idx = GalleryIndex(index_dir)
    meta = json.loads((index_dir / "index.json").read_text())
    assert meta["checkpoint"]["fingerprint"] == checkpoint_fingerprint(checkpoints["trained"])
    g = gallery_from_dataset(PairDataset(load_dataset_spec(demo["yaml"]), split="test"))
    assert idx.image_ids == g.image_ids and len(idx.image_ids) == NUM_IMAGES
    assert idx.caption_texts == g.texts and (idx.caption_image == g.caption_image).all()
    assert idx.image_emb.shape == (NUM_IMAGES, 32) and idx.caption_emb.shape == (5 * NUM_IMAGES, 32)
    assert np.allclose(np.linalg.norm(idx.image_emb, axis=1), 1.0, atol=1e-4)
    assert all(idx.thumb_path(i).is_file() for i in range(NUM_IMAGES))
    assert meta["extraction"]["image_size"] == 96 and meta["extraction"]["grid"] == 4


def test_exact_search_matches_a_stable_argsort_with_ties():
    from imagebert.retrieval.rerank import topk_candidates
    from imagebert.serve.knn import ExactSearch

    rng = np.random.default_rng(0)
    emb = np.round(rng.normal(size=(300, 8)), 0).astype(np.float32)  # many exact ties
    q = np.round(rng.normal(size=(5, 8)), 0).astype(np.float32)
    _, got = ExactSearch(emb).search(q, 17)
    want = topk_candidates(q @ emb.T, 17)
    assert (got == want).all()


def test_faiss_backend_agrees_with_torch():
    from imagebert.serve.knn import ExactSearch, FaissSearch

    rng = np.random.default_rng(1)
    emb = rng.normal(size=(500, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = emb[:4] + 0.01
    _, a = ExactSearch(emb).search(q, 10)
    _, b = FaissSearch(emb).search(q, 10)
    assert (a == b).all()


def test_index_refuses_to_overwrite_and_wrong_checkpoint(index_dir, demo, checkpoints, capsys):
    # the commands raise plainly (FileExistsError, InputError); imagebert.cli.main reports them once
    with pytest.raises(FileExistsError, match="already there"):
        serve_cli(["index", "build", str(checkpoints["trained"]), "--dataset", str(demo["yaml"]),
                   "--out", str(index_dir)])  # fmt: skip
    assert "already there" in _user_error(capsys, ["index", "build", str(checkpoints["trained"]), "--dataset",
                                                   str(demo["yaml"]), "--out", str(index_dir)])  # fmt: skip
    msg = _user_error(capsys, ["index", "add", str(index_dir), "--checkpoint", str(checkpoints["untrained"]),
                               "--dataset", str(demo["yaml"])])  # fmt: skip
    assert "not the one this index was built with" in msg


def test_missing_index_folder_is_one_line_exit_2(tmp_path, checkpoints, capsys):
    missing = tmp_path / "no_index"
    assert "not an index folder" in _user_error(capsys, ["index", "info", str(missing)])
    msg = _user_error(capsys, ["index", "add", str(missing), "--checkpoint", str(checkpoints["trained"]),
                               "--features", str(tmp_path)])  # fmt: skip
    assert "no_index" in msg
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "index.json").write_text("{not json")
    assert "not valid JSON" in _user_error(capsys, ["index", "info", str(tmp_path / "bad")])
