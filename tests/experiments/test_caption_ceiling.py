"""The caption-ceiling replay on a freshly built tiny demo corpus: every caption is true of its own image, and the
oracle recall lies between chance and 100."""

from imagebert.demo.corpus import build_demo_corpus


def test_every_caption_is_true_of_its_own_image_and_the_oracle_is_bounded(tmp_path, capsys):
    from experiments.caption_ceiling import main

    corpus = build_demo_corpus(tmp_path / "corpus", 4, 2, 12, 0, image_size=96)
    out = tmp_path / "ceiling.md"
    assert main(["--corpus", str(corpus.karpathy_json), "--split", "test", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "SELF-CHECK FAILURE" not in capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith("| generator | "))
    ir_r1, tr_r1 = float(row.split("|")[2]), float(row.split("|")[5])
    assert 100 / 12 < ir_r1 <= 100 and 0 < tr_r1 <= 100
