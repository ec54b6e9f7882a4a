"""The spec's functional API (``specs/test_gpt.py``) on top of the reference model.

Each function takes weights as a dict with GPT-2's names, as the spec does, and runs
the reference modules of ``reference/model.py`` with those tensors swapped in
(``torch.func.functional_call``): the modules are built on the ``meta`` device, so nothing is
allocated twice, and gradients flow to the tensors passed in. Sampling is ``reference/generate.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from . import model as _model
from .generate import generate as _generate
from .generate import sample_next_token, top_k_filter, top_p_filter
from .model import GPT, MLP, Block, GPTConfig
from .positional import sinusoidal_positional_encoding

__all__ = [
    "GPTConfig",
    "block_forward",
    "check_idx",
    "count_parameters",
    "cross_entropy",
    "gelu",
    "generate",
    "gpt_forward",
    "init_params",
    "layer_norm",
    "mlp_forward",
    "sample_next_token",
    "sinusoidal_positional_encoding",
    "top_k_filter",
    "top_p_filter",
]

_TIED = "lm_head.weight"  # the head is transformer.wte.weight; the dicts here leave it out


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the last dimension (the reference model's op)."""
    return F.layer_norm(x, (x.size(-1),), weight, bias, eps)


def gelu(x: Tensor) -> Tensor:
    """GPT-2's GELU, the tanh approximation (the reference MLP's op)."""
    return F.gelu(x, approximate="tanh")


def _meta_config(n_embd: int, n_head: int, bias: bool) -> GPTConfig:
    # a block does not depend on vocab_size, block_size or n_layer
    return GPTConfig(block_size=1, vocab_size=1, n_layer=1, n_head=n_head, n_embd=n_embd, bias=bias)


def mlp_forward(x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """``reference.model.MLP`` with ``params`` (names ``mlp.c_fc.*``, ``mlp.c_proj.*``)."""
    with torch.device("meta"):
        mlp = MLP(_meta_config(x.size(-1), 1, "mlp.c_fc.bias" in params)).eval()
    local = {k.removeprefix("mlp."): v for k, v in params.items() if k.startswith("mlp.")}
    out: Tensor = functional_call(mlp, local, (x,), strict=True)
    return out


def block_forward(x: Tensor, params: Mapping[str, Tensor], n_head: int) -> Tensor:
    """``reference.model.Block`` with ``params`` (GPT-2's names relative to the block)."""
    with torch.device("meta"):
        block = Block(_meta_config(x.size(-1), n_head, "ln_1.bias" in params)).eval()
    out: Tensor = functional_call(block, dict(params), (x,), strict=True)
    return out


def check_idx(idx: Tensor, config: GPTConfig) -> None:
    """The reference model's input validation: the shape (the forward pass checks it on every
    step) and the ids' range (checked where ids enter: no device sync inside the model)."""
    _model.check_idx(idx, config.block_size)
    _model.check_token_ids(idx, config.vocab_size)


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -1) -> Tensor:
    """The reference model's loss: torch's cross-entropy."""
    return F.cross_entropy(logits, targets.long(), ignore_index=ignore_index)


def _meta_model(config: GPTConfig) -> GPT:
    with torch.device("meta"):
        return GPT(config).eval()


def gpt_forward(
    idx: Tensor,
    params: Mapping[str, Tensor],
    config: GPTConfig,
    targets: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``reference.model.GPT(config)`` in eval mode, run with ``params``; ids are checked here,
    at the edge (the model's forward pass reads only their shape)."""
    check_idx(idx, config)
    return run_model(params, config, idx, targets)


def init_params(config: GPTConfig, seed: int = 0) -> dict[str, Tensor]:
    """The weights of a freshly built ``reference.model.GPT(config)``, seeded."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
        torch.manual_seed(seed)
        model = GPT(config)
    return {k: v.detach() for k, v in model.state_dict().items() if k != _TIED}


def count_parameters(config: GPTConfig) -> int:
    """``GPT.num_parameters()`` of the model, built on the meta device (nothing allocated)."""
    return _meta_model(config).num_parameters()


def generate(
    idx: Tensor,
    params: Mapping[str, Tensor],
    config: GPTConfig,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> Tensor:
    """``reference.generate.generate`` with a model holding ``params``, without the KV cache
    (the GPT chapter's contract: each step runs the last ``block_size`` tokens; the cache is
    the kvcache chapter's, and gives the same tokens)."""
    return _generate(
        model_with(params, config),
        idx,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
        eos_id=eos_id,
        use_cache=False,
    )


def model_with(params: Mapping[str, Tensor], config: GPTConfig) -> GPT:
    """A ``reference.model.GPT(config)`` in eval mode whose weights are the tensors of
    ``params`` themselves (no copies; gradients flow to them)."""
    model = _meta_model(config)
    weights = {**params, _TIED: params["transformer.wte.weight"]}
    model.load_state_dict(weights, strict=True, assign=True)
    return model


def run_model(params: Mapping[str, Tensor], config: GPTConfig, idx: Tensor,
              targets: Tensor | None = None, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
    """``GPT(config)(idx, targets, **kwargs)`` run with ``params`` (``torch.func``)."""
    out: tuple[Tensor, Tensor | None] = functional_call(
        _meta_model(config), dict(params), (idx, targets), kwargs, tie_weights=True,
        strict=True,
    )
    return out
