"""One factory for the model architectures: GPT-2 (``reference.model``) and Llama-style
(``reference.llama``), chosen by the config's ``arch`` field.

Both models have the same interface (``forward(idx, targets, cache=, input_pos=)``,
``new_cache``, ``num_parameters``, ``set_activation_checkpointing``, ``config``), so code that
takes a model works with either. A config dict without ``arch`` is GPT-2: checkpoints written
before there was a choice load unchanged.

Example::

    >>> model = build_model(model_config_from_dict(
    ...     {"arch": "llama", "block_size": 8, "vocab_size": 10, "n_layer": 1, "n_head": 2,
    ...      "n_embd": 8}))
    >>> type(model).__name__, model.config.n_kv_head
    ('Llama', 2)
    >>> type(build_model(model_config_from_dict({"n_layer": 1, "n_embd": 12, "n_head": 2,
    ...                                           "vocab_size": 10, "block_size": 8}))).__name__
    'GPT'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from .llama import Llama, LlamaConfig
from .model import GPT, GPTConfig

__all__ = ["ModelConfig", "build_model", "model_config_from_dict"]

ModelConfig = Annotated[GPTConfig | LlamaConfig, Field(discriminator="arch")]
_ADAPTER: TypeAdapter[GPTConfig | LlamaConfig] = TypeAdapter(ModelConfig)


def model_config_from_dict(d: Mapping[str, Any]) -> GPTConfig | LlamaConfig:
    """The config of ``d``'s ``arch`` (``"gpt2"`` when absent), validated: a ValidationError
    names a bad field or an unknown arch."""
    return _ADAPTER.validate_python({"arch": "gpt2", **d})


def build_model(config: GPTConfig | LlamaConfig) -> GPT | Llama:
    """A freshly initialised model of ``config``'s architecture."""
    if isinstance(config, LlamaConfig):
        return Llama(config)
    if isinstance(config, GPTConfig):
        return GPT(config)
    raise TypeError(f"not a model config: {type(config).__name__}")
