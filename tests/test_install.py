"""A non-editable install runs the demo: the wheel must carry the shipped configs and weights, and nothing may read
files from the source tree. Built offline from a copy of the tree; installed with --target beside .venv's
dependencies; run from a folder outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_DEMO = ["--num-train", "12", "--num-val", "2", "--num-test", "3", "--image-size", "64", "--extract-size", "64",
             "--pretrain-steps", "2", "--pretrain-batch", "4", "--finetune-steps", "2", "--finetune-batch", "2",
             "--examples", "0", "--set", "fast_ks=[]", "--detector-pretrain-steps", "0",
             "--detector-finetune-steps", "0", "--eval-precision", "fp32", "--train-precision", "fp32",
             "--no-extract-bf16"]  # fmt: skip


@pytest.mark.slow
def test_wheel_install_runs_the_demo_outside_the_repo(tmp_path, tiny_bert_path):
    src = tmp_path / "src_copy"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
                    symlinks=False)  # fmt: skip
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(src)], check=True, env=env, timeout=300, capture_output=True)  # fmt: skip
    (wheel,) = wheels.glob("imagebert-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("imagebert/configs/pretrain/demo_cpu.yaml", "imagebert/configs/datasets/coco.yaml",
                   "imagebert/lait/weights/scorer_default.safetensors", "imagebert/lait/imagenet_classes.txt",
                   "imagebert/py.typed"):  # fmt: skip
        assert needed in names, needed

    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(meta).decode()
    base = [x for x in metadata.splitlines() if x.startswith("Requires-Dist:") and "extra ==" not in x]
    assert not any(
        pkg in " ".join(base) for pkg in ("dask", "fastapi", "matplotlib", "tensorboard", "efficientnet")
    )
    for extra in ("extract", "lait", "serve", "demo", "hdf5", "faiss", "all", "dev"):
        assert f"Provides-Extra: {extra}" in metadata, extra

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, env=env, timeout=300, capture_output=True)  # fmt: skip
    run_env = {**env, "PYTHONPATH": str(target)}  # before .venv's site-packages (and its editable src path)
    run_env.pop("OMP_NUM_THREADS", None)
    where = tmp_path / "elsewhere"
    where.mkdir()
    probe = "import imagebert, json; print(json.dumps(imagebert.__file__))"
    found = json.loads(subprocess.run([sys.executable, "-c", probe], env=run_env, cwd=where, check=True,
                                      capture_output=True, text=True, timeout=120).stdout)  # fmt: skip
    assert Path(found).is_relative_to(target), found

    script = target / "bin" / "imagebert"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "imagebert"]
    proc = subprocess.run([*cmd, "demo", "--out", "demo", "--bert", str(tiny_bert_path), "--threads", "1",
                           *TINY_DEMO], env=run_env, cwd=where, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (where / "demo" / "report.md").read_text()
    assert "fine-tuned" in report and str(ROOT) not in report
    assert not (ROOT / "demo").exists()
