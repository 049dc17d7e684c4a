"""`imagebert index add`: new images go into a new shard; the built shard is not touched."""

from __future__ import annotations

import shutil

from PIL import Image

from tests.serve.conftest import NUM_IMAGES, serve_cli


def test_add_images_extracts_a_new_shard_without_rebuilding(tmp_path, index_dir, checkpoints, demo, capsys):
    from imagebert.serve.index import GalleryIndex

    index = tmp_path / "index"
    shutil.copytree(index_dir, index)
    first = index / "shards" / "00000"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in first.iterdir()}
    new = tmp_path / "new_images"
    new.mkdir()
    src = sorted(demo["images"].glob("*.png"))[:2]
    for k, p in enumerate(src):
        Image.open(p).rotate(90).save(new / f"added_{k}.png")
    (new / "notes.txt").write_text("not an image")
    caps = tmp_path / "caps.tsv"
    caps.write_text("image_id\tcaption\nadded_0\ta rotated scene\nadded_1\tanother rotated scene\n")
    rc = serve_cli(["index", "add", str(index), "--checkpoint", str(checkpoints["trained"]), "--images", str(new),
                    "--captions", str(caps)])  # fmt: skip
    assert rc == 0
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in first.iterdir()}
    assert after == before
    idx = GalleryIndex(index)
    assert idx.num_images == NUM_IMAGES + 2 and idx.image_ids[-2:] == ["added_0", "added_1"]
    assert idx.num_captions == 5 * NUM_IMAGES + 2
    assert idx.record(NUM_IMAGES).num_boxes == 17  # grid 4 x 4 + whole image
    assert idx.thumb_path(NUM_IMAGES + 1).is_file()
    # adding the same images again is refused by id: one line from imagebert.cli.main, exit 2
    from imagebert.cli import main

    capsys.readouterr()
    rc = main(["index", "add", str(index), "--checkpoint", str(checkpoints["trained"]),
               "--features", str(demo["store"])])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "already in the index" in err and "Traceback" not in err
