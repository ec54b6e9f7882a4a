"""The GPT-2 forward pass and loss, written as functions of a dict of weights.

The weights use GPT-2's names (those of Hugging Face's ``GPT2LMHeadModel`` and nanoGPT), in
``nn.Linear`` layout (out, in); C = n_embd, V = vocab_size::

    transformer.wte.weight   (V, C)            token embeddings, also the LM head (tied)
    transformer.wpe.weight   (block_size, C)   learned position embeddings
    transformer.h.{i}.*      block i's weights, see block.py
    transformer.ln_f.weight, transformer.ln_f.bias   (C,)

There is no ``lm_head.weight`` entry: the head *is* ``transformer.wte.weight`` (weight tying), so
the logits are ``ln_f(x) @ wte.T``, and the embedding's gradient gets both contributions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from reference.model import GPTConfig  # given: the library's model config

from .block import block_forward
from .layers import layer_norm


def _parameter_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in GPT-2's order (given; not an exercise)."""
    C, V = config.n_embd, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {
        "transformer.wte.weight": (V, C),
        "transformer.wpe.weight": (config.block_size, C),
    }
    per_block = {
        "ln_1.weight": (C,), "ln_1.bias": (C,),
        "attn.c_attn.weight": (3 * C, C), "attn.c_attn.bias": (3 * C,),
        "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
        "ln_2.weight": (C,), "ln_2.bias": (C,),
        "mlp.c_fc.weight": (4 * C, C), "mlp.c_fc.bias": (4 * C,),
        "mlp.c_proj.weight": (C, 4 * C), "mlp.c_proj.bias": (C,),
    }  # fmt: skip
    for i in range(config.n_layer):
        for name, shape in per_block.items():
            if config.bias or not name.endswith(".bias"):
                shapes[f"transformer.h.{i}.{name}"] = shape
    shapes["transformer.ln_f.weight"] = (C,)
    if config.bias:
        shapes["transformer.ln_f.bias"] = (C,)
    return shapes


def count_parameters(config: GPTConfig) -> int:
    """The number of parameters of the model ``config`` describes, the tied head counted once.

    Contract: a closed form in the config's fields, no tensors needed. Per block (C = n_embd):
    attention 3C·C + C·C weights, MLP 4C·C + 4C·C, and with ``bias`` the biases 3C + C + 4C + C
    and the two LayerNorms' shifts; the LayerNorm scales are 2C either way. Then the embeddings
    V·C and block_size·C, and the final LayerNorm. The LM head adds nothing: it is ``wte``.

    Worked example: GPT-2 small (V 50257, block 1024, 12 layers, C 768) has 124,439,808::

        >>> count_parameters(GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_embd=768))
        124439808

    Hint: 12·C² + 13·C per block with biases.
    """
    raise NotImplementedError("exercises/gpt/model.py::count_parameters is a stub: fill it in (task gpt), then run `pytest exercises -m gpt`")


def init_params(config: GPTConfig, seed: int = 0) -> dict[str, Tensor]:
    """Fresh float32 weights with GPT-2's initialisation, reproducible from ``seed``.

    Contract: the keys and shapes of the module docstring (no ``lm_head.weight``), and

    * every Linear weight and both embeddings ~ N(0, 0.02²);
    * except the residual projections ``attn.c_proj.weight`` and ``mlp.c_proj.weight``:
      N(0, (0.02 / sqrt(2·n_layer))²), because each block adds two of them to the residual
      stream, whose variance would otherwise grow with depth;
    * biases 0, LayerNorm weights 1 (and LayerNorm biases 0).

    The same seed gives the same tensors; draw from a ``torch.Generator`` seeded with ``seed``
    so the global random state is untouched.

    Hint: ``_parameter_shapes(config)`` lists names and shapes; ``torch.empty(shape).normal_(0,
    std, generator=g)``.
    """
    raise NotImplementedError("exercises/gpt/model.py::init_params is a stub: fill it in (task gpt), then run `pytest exercises -m gpt`")


def check_idx(idx: Tensor, config: GPTConfig) -> None:
    """Reject a bad batch of token ids with an error that names the value and the limit.

    Contract: ``idx`` must be a tensor (TypeError) of dtype torch.int64 or torch.int32
    (TypeError naming the dtype), of shape (B, T) (ValueError), not empty (ValueError saying
    "empty"), with T <= block_size (ValueError, e.g. "sequence length 300 exceeds block_size
    256") and every id in [0, vocab_size) (ValueError naming the bad id and vocab_size).

    Why here: an id out of range would index past the embedding table (a cryptic IndexError on
    CPU, a device-side assert on GPU); T > block_size has no learned position.
    """
    raise NotImplementedError("exercises/gpt/model.py::check_idx is a stub: fill it in (task gpt), then run `pytest exercises -m gpt`")


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -1) -> Tensor:
    """The mean negative log-likelihood of ``targets`` under ``softmax(logits)``.

    Contract: ``logits`` (N, V) float, ``targets`` (N,) int ids; positions whose target is
    ``ignore_index`` count neither in the sum nor in the mean. Equals
    ``torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index)``::

        loss = mean over kept n of  logsumexp(logits[n]) - logits[n, targets[n]]

    Worked example: logits [[0, 0]] (two equally likely tokens), target [1]: loss = ln 2; a
    target equal to ``ignore_index`` counts for nothing::

        >>> cross_entropy(torch.zeros(2, 2), torch.tensor([1, -1]))
        tensor(0.6931)

    Hint: ``torch.logsumexp`` is the stable log of a sum of exponentials; ``gather`` picks the
    target's logit (replace ignored targets by a valid id such as 0 first, then mask them out:
    ``ignore_index`` may be any int, -100 or one past the vocabulary too).
    """
    raise NotImplementedError("exercises/gpt/model.py::cross_entropy is a stub: fill it in (task gpt), then run `pytest exercises -m gpt`")


def gpt_forward(
    idx: Tensor,
    params: Mapping[str, Tensor],
    config: GPTConfig,
    targets: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """GPT-2's forward pass: token ids (B, T) -> logits (B, T, V), and the loss given targets.

    Contract::

        x = wte[idx] + wpe[0:T]                       # (B, T, C): what and where
        x = block_i(x) for i in 0 .. n_layer - 1      # block_forward with transformer.h.{i}.*
        logits = ln_f(x) @ wte.T                       # (B, T, V): tied LM head

    ``targets`` (B, T) are the next tokens (``idx`` shifted left by one; the data loader
    shifts, not this function), ``-1`` where no loss is wanted; the loss is
    :func:`cross_entropy` over all B·T positions. The input is validated with
    :func:`check_idx` first. No dropout: this is the deterministic (eval) pass.

    Hint: ``{k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}``
    with ``prefix = f"transformer.h.{i}."`` gives block i's dict (mind the trailing dot:
    "h.1." must not match "h.10.").
    """
    raise NotImplementedError("exercises/gpt/model.py::gpt_forward is a stub: fill it in (task gpt), then run `pytest exercises -m gpt`")
