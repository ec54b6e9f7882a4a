"""The run configuration: YAML files, overrides, and rejection of unknown keys and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference.model import GPTConfig
from reference.trainer.config import (
    Config,
    config_from_dict,
    dump_config,
    load_config,
    parse_overrides,
)

pytestmark = pytest.mark.trainer
ROOT = Path(__file__).resolve().parent.parent


def test_the_main_job_config_file_equals_the_defaults() -> None:
    assert load_config(ROOT / "configs" / "tiny_cpu.yaml") == Config()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path: Path, tmp_path: Path) -> None:
    config = load_config(path)
    copy = tmp_path / "copy.yaml"
    copy.write_text(dump_config(config))
    assert load_config(copy) == config


def test_overrides_apply_over_the_file_with_yaml_values(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1.0e-3\n  max_steps: 10\n  warmup_steps: 2\n"
                    "model:\n  n_layer: 3\n")
    config = load_config(path, ["train.lr=3e-4", "model.bias=true", "train.grad_clip=null",
                                "sample.prompt=hello world", "data.source=markov"])
    assert config.train.lr == 3e-4  # YAML reads "3e-4" as a string; it is coerced
    assert config.train.max_steps == 10 and config.model.n_layer == 3
    assert config.model.bias is True and config.train.grad_clip is None
    assert config.sample.prompt == "hello world" and config.data.source == "markov"


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"trian": {"lr": 1.0}}, "'trian' (did you mean 'train'?)"),
        ({"train": {"max_step": 5}}, "'train.max_step' (did you mean 'train.max_steps'?)"),
        ({"model": {"n_layers": 2}}, "'model.n_layers'"),
        ({"train": {"lr": -1.0}}, "train.lr: input should be greater than 0, got -1.0"),
        ({"train": {"lr": "fast"}}, "train.lr: input should be a valid number"),
        ({"train": {"lr": float("nan")}}, "train.lr: input should be a finite number, got nan"),
        ({"train": {"lr": True}}, "train.lr: expected a number, not a boolean, got True"),
        ({"train": {"batch_size": 2.5}}, "batch_size: input should be a valid integer, got 2.5"),
        ({"train": {"batch_size": True}}, "batch_size: input should be a valid integer, got True"),
        ({"train": {"batch_size": "4"}}, "batch_size: input should be a valid integer, got '4'"),
        ({"train": {"batch_size": 0}}, "batch_size: input should be greater than or equal to 1"),
        ({"train": {"compile": 1}}, "train.compile: input should be a valid boolean, got 1"),
        ({"train": {"dtype": "fp8"}}, "train.dtype: input should be 'float32', 'bfloat16' or 'f"),
        ({"train": {"min_lr": 1.0}}, "config: train.min_lr 1.0 must be in [0, train.lr"),
        ({"train": {"warmup_steps": 900, "max_steps": 100}}, "max_steps 100 must be >= train.w"),
        ({"train": {"warmup_steps": 9, "decay_steps": 5}}, "decay_steps 5 must be >= train.w"),
        ({"model": {"n_embd": 100, "n_head": 3}}, "model: n_embd 100 is not divisible by n_head 3"),
        ({"model": {"dropout": 1.0}}, "model.dropout: input should be less than 1, got 1.0"),
        ({"data": {"source": "s3"}}, "data.source: input should be 'builtin', 'shakespeare', 'te"),
        ({"data": {"source": "text"}}, "data.source=text needs data.path"),
        ({"data": {"tokenizer": "gpt2"}}, "data.tokenizer=gpt2 needs data.tokenizer_path"),
        ({"sample": {"top_p": 1.5}}, "top_p: input should be less than or equal to 1, got 1.5"),
        ({"sample": {"prompt": 3}}, "sample.prompt: input should be a valid string, got 3"),
        ({"model": [1, 2]}, "section 'model' must be a mapping"),
        ([1, 2], "expected a mapping of sections"),
    ],
)
def test_bad_configs_are_rejected_naming_the_key_and_value(raw: object, named: str) -> None:
    with pytest.raises(ValueError) as info:
        config_from_dict(raw)
    assert named in str(info.value)


def test_a_bad_yaml_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: 1.0\n  epochs: 3\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown key 'train\.epochs'"):
        load_config(path)
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("item", ["lr=3", "train.lr", "=3", "train.=3"])
def test_malformed_overrides_are_rejected(item: str) -> None:
    with pytest.raises(ValueError, match=r"section\.key=value"):
        parse_overrides([item])


def test_configs_are_frozen() -> None:
    config = Config()
    with pytest.raises(ValueError, match="frozen"):
        config.train.lr = 1.0  # type: ignore[misc]


def test_the_model_section_is_the_models_own_config() -> None:
    """One model config: the run's model section is a GPTConfig, no second copy of its fields."""
    config = load_config(overrides=["model.n_layer=2"])
    assert type(config.model) is GPTConfig and config.model.n_layer == 2
    assert config.model.n_embd == 128, "a partial section keeps the main job's other values"


@pytest.mark.parametrize("given", [None, 65])
def test_vocab_size_comes_from_the_tokenizer(given: int | None) -> None:
    overrides = [] if given is None else [f"model.vocab_size={given}"]
    config = load_config(overrides=overrides).with_vocab_size(65)
    assert config.model.vocab_size == 65


def test_a_vocab_size_that_disagrees_with_the_tokenizer_is_refused() -> None:
    config = load_config(overrides=["model.vocab_size=100"])
    with pytest.raises(ValueError, match=r"model.vocab_size=100 but the tokenizer has 65 tokens"):
        config.with_vocab_size(65)


def test_overrides_parse_yaml_values_but_keep_text_as_given() -> None:
    config = load_config(overrides=["sample.prompt=  two spaces, then: a colon ",
                                    "data.source=jsonl", "data.path=null.jsonl",
                                    "train.threads=2", "model.bias=true", "sample.top_k=null",
                                    "data.jsonl_field=123", "data.hf_config=null"])
    assert config.sample.prompt == "  two spaces, then: a colon "
    assert config.data.path == "null.jsonl" and config.data.hf_config is None
    assert config.train.threads == 2 and config.model.bias is True
    assert config.sample.top_k is None and config.data.jsonl_field == "123"
