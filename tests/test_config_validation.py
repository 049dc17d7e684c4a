"""One validation style (issue 13): each config dataclass carries `validate()`, load_config calls it for every
section, the old function names still work, user path errors are one line from cli.main, and the demo builds its
configs as typed objects (the same values as the old `--set` strings)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imagebert.config_utils import ConfigError, load_config, to_dict


def _stage(**kw) -> str:
    body = ", ".join(f"{k}: {v}" for k, v in {"name": "a", "steps": 2, **kw}.items())
    return f"stages=[{{{body}}}]"


# ------------------------------------------------------------------------------------- validate() methods


def test_pretrain_config_validate_names_the_key_and_the_old_name_still_works():
    from imagebert.tasks.pretraining import load_pretrain_config, validate_config

    cfg = load_pretrain_config(None, [_stage()], check_paths=False)
    cfg.validate(check_paths=False)
    cfg.itm.negative_ratio = 1.5
    with pytest.raises(ConfigError, match=r"itm\.negative_ratio"):
        cfg.validate(check_paths=False)
    with pytest.raises(ConfigError, match=r"itm\.negative_ratio"):
        validate_config(cfg, check_paths=False)
    cfg.itm.negative_ratio = 0.5
    with pytest.raises(ConfigError, match=r"stages\[0\]\.datasets"):  # check_paths defaults to True
        cfg.validate()


def test_pretrain_loader_rejects_a_bad_value_naming_the_key():
    from imagebert.tasks.pretraining import load_pretrain_config

    with pytest.raises(ConfigError, match=r"stages\[0\] \(a\)\.batch_size"):
        load_pretrain_config(None, [_stage(batch_size=0)], check_paths=False)


def test_finetune_config_validate_names_the_key_and_the_old_name_still_works(tmp_path):
    from imagebert.tasks.retrieval import FinetuneConfig, load_finetune_config, validate_config

    cfg = FinetuneConfig()
    cfg.validate()
    cfg.negatives.num_negatives = 0
    with pytest.raises(ConfigError, match=r"negatives\.num_negatives"):
        cfg.validate()
    with pytest.raises(ConfigError, match=r"negatives\.num_negatives"):
        validate_config(cfg)
    with pytest.raises(ConfigError, match=r"negatives\.pool_size"):
        load_finetune_config(None, ["negatives.pool_size=1"])
    cfg = FinetuneConfig(init_checkpoint=str(tmp_path / "nothing"))
    cfg.validate(check_paths=False)
    with pytest.raises(ConfigError, match="init_checkpoint"):
        cfg.validate()


def test_demo_settings_validate_runs_from_load_config_and_the_old_name():
    from imagebert.demo.cli import check_demo_settings
    from imagebert.demo.pipeline import DemoSettings

    DemoSettings().validate()
    bad = DemoSettings(extract_size=40)
    with pytest.raises(ConfigError, match="extract_size"):
        bad.validate()
    with pytest.raises(ConfigError, match="extract_size"):
        check_demo_settings(bad)
    with pytest.raises(ConfigError, match="pretrain_batch must be >= 1"):
        load_config(DemoSettings, None, ["pretrain_batch=0"])
    with pytest.raises(ConfigError, match="train_precision"):
        load_config(DemoSettings, None, ["train_precision=int8"])


def test_lait_config_validate_runs_from_load_config_and_the_old_name():
    from imagebert.lait.config import LaitConfig, load_lait_config, validate_lait_config

    cfg = LaitConfig()
    assert validate_lait_config(cfg) is cfg
    cfg.run.pages_per_task = 0
    with pytest.raises(ConfigError, match=r"run\.pages_per_task"):
        cfg.validate()
    with pytest.raises(ConfigError, match=r"run\.pages_per_task"):
        validate_lait_config(cfg)
    with pytest.raises(ConfigError, match=r"scoring\.min_score"):
        load_lait_config(None, ["scoring.min_score=2"])


def test_post_init_validators_are_validate_methods_raising_config_errors():
    from imagebert.data.masking import MaskingConfig
    from imagebert.data.store import BoxSelection
    from imagebert.modeling.tasks import PretrainingTasks
    from imagebert.retrieval.engine import BlockPlan

    for build, key in (
        (lambda: MaskingConfig(text_mask_prob=1.5), r"masking\.text_mask_prob"),
        (lambda: BoxSelection(top_n=0), "top_n"),
        (lambda: PretrainingTasks(itc_weight=-1), r"tasks\.itc_weight"),
        (lambda: BlockPlan(10, 10, block_captions=0), "block_captions"),
    ):
        with pytest.raises(ConfigError, match=key):
            build()
    m = MaskingConfig()
    m.region_zero_prob = 2.0  # changed after construction: validate() catches it
    with pytest.raises(ConfigError, match=r"masking\.region_zero_prob"):
        m.validate()
    assert BoxSelection().top_n == 100  # __post_init__ still fills the default before validating


def test_nested_sections_are_validated_by_the_pretrain_loader():
    from imagebert.tasks.pretraining import load_pretrain_config

    with pytest.raises(ConfigError, match=r"masking\.text_replace_mask"):
        load_pretrain_config(None, [_stage(), "masking.text_replace_mask=0.95"], check_paths=False)
    # TrainerConfig.validate(prefix) takes an argument: left to the parent, which merges each stage first
    cfg = load_pretrain_config(None, [_stage(), "training.epochs=null"], check_paths=False)
    assert cfg.training.epochs is None and cfg.stages[0].steps == 2


@dataclass
class _Leaf:
    x: int = 0

    def validate(self) -> None:
        if self.x < 0:
            raise ConfigError(f"leaf.x must be >= 0, got {self.x}")


@dataclass
class _Tree:
    leaf: _Leaf = field(default_factory=_Leaf)
    leaves: list[_Leaf] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def validate(self) -> None:
        self.calls.append("tree")


def test_load_config_validates_nested_sections_and_list_items(tmp_path):
    assert load_config(_Tree, None, []).calls == ["tree"]
    with pytest.raises(ConfigError, match="leaf.x must be >= 0, got -1"):
        load_config(_Tree, None, ["leaf.x=-1"])
    path = tmp_path / "tree.yaml"
    path.write_text("leaves:\n  - {x: 1}\n  - {x: -2}\n")
    with pytest.raises(ConfigError, match=r"tree\.yaml: leaf\.x must be >= 0, got -2"):
        load_config(_Tree, path)


# ----------------------------------------------------------------------------------- errors caught once


def test_a_missing_index_folder_is_one_line_exit_2(tmp_path, capsys):
    from imagebert.cli import main

    rc = main(["index", "info", str(tmp_path / "no_index")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("imagebert index: error: ") and "no_index" in err and "not an index folder" in err


def test_main_reports_path_errors_once_and_leaves_bugs_as_tracebacks(tmp_path, capsys, monkeypatch):
    import imagebert.serve.index as index
    from imagebert.cli import main

    def gone(path):
        raise FileNotFoundError(f"{path}: gone")

    monkeypatch.setattr(index, "read_meta", gone)
    assert main(["index", "info", "IDX"]) == 2
    assert capsys.readouterr().err == "imagebert index: error: IDX: gone\n"

    def bug(path):
        raise KeyError("a programming error")

    monkeypatch.setattr(index, "read_meta", bug)
    with pytest.raises(KeyError):
        main(["index", "info", "IDX"])


def test_serve_commands_no_longer_convert_errors_themselves():
    import imagebert.serve.cli as serve_cli
    from imagebert.errors import InputError
    from imagebert.serve.index import UntrainedProjectionsError

    assert not hasattr(serve_cli, "_ERRORS") and not hasattr(serve_cli, "_reraise")
    assert issubclass(UntrainedProjectionsError, InputError)  # reported by cli.main as one line


def test_a_corrupt_index_file_is_an_input_error(tmp_path):
    from imagebert.errors import InputError
    from imagebert.serve.index import read_meta

    (tmp_path / "index.json").write_text("{oops")
    with pytest.raises(InputError, match="not valid JSON"):
        read_meta(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps([1, 2]))
    with pytest.raises(InputError, match="not a JSON object"):
        read_meta(tmp_path)


# ---------------------------------------------------------------------------- the demo's typed configs


def _old_pretrain_config(dataset_yaml: Path, s, bert_path, steps):
    """What demo/pipeline.py's `_pretrain` built before: `--set`-style strings."""
    from imagebert.demo.pipeline import _configs_dir
    from imagebert.tasks.pretraining import load_pretrain_config

    overrides = [
        f"stages.0.datasets=[{dataset_yaml}]",
        f"stages.0.steps={steps or s.pretrain_steps}",
        f"training.batch_size={s.pretrain_batch}",
        f"training.precision={s.train_precision}",
        "training.progress_bar=true",
    ]
    if bert_path is not None:
        overrides.append(f"init_from_bert={bert_path}")
    return load_pretrain_config(_configs_dir() / "pretrain" / "demo_cpu.yaml", overrides)


def _old_finetune_config(dataset_yaml: Path, pretrained: Path, s, steps):
    from imagebert.demo.pipeline import _configs_dir
    from imagebert.tasks.retrieval import load_finetune_config

    return load_finetune_config(
        _configs_dir() / "finetune" / "demo_cpu.yaml",
        [
            f"dataset={dataset_yaml}",
            f"init_checkpoint={pretrained}",
            f"training.steps={steps or s.finetune_steps}",
            f"training.batch_size={s.finetune_batch}",
            f"training.precision={s.train_precision}",
        ],
    )


@pytest.mark.parametrize("steps", [None, 7])
def test_demo_pretrain_config_is_typed_and_equals_the_old_overrides(tmp_path, steps):
    from imagebert.demo.pipeline import DemoSettings, demo_pretrain_config
    from imagebert.tasks.pretraining import PretrainConfig

    dataset_yaml = tmp_path / "dataset.yaml"
    dataset_yaml.write_text("feature_store: x\ncaptions: []\n")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text("{}")
    s = DemoSettings(pretrain_steps=11, pretrain_batch=5, train_precision="fp32")
    for bert_path in (None, bert):
        cfg = demo_pretrain_config(dataset_yaml, s, bert_path, steps=steps)
        assert isinstance(cfg, PretrainConfig)
        assert cfg.stages[0].datasets == [str(dataset_yaml)]
        assert cfg.stages[0].steps == (steps or 11)
        assert cfg.training.batch_size == 5 and cfg.training.precision == "fp32" and cfg.training.progress_bar
        assert cfg.init_from_bert == (None if bert_path is None else str(bert))
        assert to_dict(cfg) == to_dict(_old_pretrain_config(dataset_yaml, s, bert_path, steps))


def test_demo_pretrain_config_validates_the_dataset_path(tmp_path):
    from imagebert.demo.pipeline import DemoSettings, demo_pretrain_config

    with pytest.raises(ConfigError, match=r"stages\[0\]\.datasets\[0\]: file not found"):
        demo_pretrain_config(tmp_path / "missing.yaml", DemoSettings())


@pytest.mark.parametrize("steps", [None, 4])
def test_demo_finetune_config_is_typed_and_equals_the_old_overrides(tmp_path, steps):
    from imagebert.demo.pipeline import DemoSettings, demo_finetune_config
    from imagebert.tasks.retrieval import FinetuneConfig

    dataset_yaml = tmp_path / "dataset.yaml"
    dataset_yaml.write_text("feature_store: x\ncaptions: []\n")
    pretrained = tmp_path / "pretrain" / "final"
    pretrained.mkdir(parents=True)
    (pretrained / "config.json").write_text("{}")
    s = DemoSettings(finetune_steps=9, finetune_batch=3, train_precision="bf16")
    cfg = demo_finetune_config(dataset_yaml, pretrained, s, steps=steps)
    assert isinstance(cfg, FinetuneConfig)
    assert cfg.dataset == str(dataset_yaml) and cfg.init_checkpoint == str(pretrained)
    assert cfg.training.steps == (steps or 9) and cfg.training.batch_size == 3
    assert cfg.training.precision == "bf16"
    assert to_dict(cfg) == to_dict(_old_finetune_config(dataset_yaml, pretrained, s, steps))
    with pytest.raises(ConfigError, match="init_checkpoint"):
        demo_finetune_config(dataset_yaml, tmp_path / "not_a_checkpoint", s)


# -------------------------------------------------------------------------------------------- exports


def test_package_exports_resolve():
    import imagebert.retrieval as retrieval
    import imagebert.training as training
    from imagebert.retrieval.validation import RetrievalValidator
    from imagebert.training.trainer import TaskLoss, Trainer, TrainerConfig

    assert retrieval.RetrievalValidator is RetrievalValidator
    assert (training.TaskLoss, training.Trainer, training.TrainerConfig) == (TaskLoss, Trainer, TrainerConfig)
    for module in (retrieval, training):
        for name in module.__all__:
            assert getattr(module, name) is not None, name
