"""`python -m imagebert ...`, which is also how torchrun starts the CLI (`torchrun -m imagebert pretrain ...`)."""

from imagebert.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
