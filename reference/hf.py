"""Hugging Face GPT-2 checkpoints: state-dict conversion both ways, and loading from a local path.

Our parameter names are GPT-2's, so the map is key to key, with three differences:

* GPT-2's ``Conv1D`` stores a weight as (in, out), ``nn.Linear`` as (out, in): the four
  projections ``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj`` are transposed;
* Hugging Face files may carry the causal-mask buffers ``attn.bias`` / ``attn.masked_bias``
  (not weights; dropped) and, for ``GPT2Model`` files such as the hub's ``gpt2``, no
  ``transformer.`` prefix;
* ``lm_head.weight`` is tied to ``transformer.wte.weight`` (both ways).

Loading never unpickles: only safetensors files are read (``pytorch_model.bin`` is refused with
a hint). Nothing here touches the network.

Example::

    model = load_gpt2("/models/gpt2")           # config.json + model.safetensors
    model = load_gpt2("/models/gpt2/model.safetensors")   # bare file: config from the shapes
    save_hf(model, "out/hf")                    # GPT2LMHeadModel.from_pretrained("out/hf")
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from .atomic import write_json
from .checkpoint import TIED_KEYS, load_weights, save_safetensors
from .model import GPT, LAYER_NORM_EPS, GPTConfig

TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older transformers
N_HEAD_BY_WIDTH = {768: 12, 1024: 16, 1280: 20, 1600: 25}  # GPT-2 small, medium, large, xl
EOT_ID = 50256  # <|endoftext|>


def _is_transposed(key: str) -> bool:
    return key.endswith(TRANSPOSED)


def from_hf_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A Hugging Face GPT-2 state dict (``GPT2LMHeadModel`` or ``GPT2Model`` keys) -> ours.

    Returns our names with the ``transformer.`` prefix, ``nn.Linear`` layout, no buffers and no
    ``lm_head.weight``. An untied ``lm_head.weight`` (one that differs from the token
    embedding) cannot be represented: ValueError.
    """
    out: dict[str, Tensor] = {}
    head = None
    for key, value in state_dict.items():
        if key.endswith(BUFFERS):
            continue
        if key in TIED_KEYS:
            head = value
            continue
        ours = key if key.startswith("transformer.") else f"transformer.{key}"
        out[ours] = value.t().contiguous() if _is_transposed(key) else value
    wte = out.get("transformer.wte.weight")
    if head is not None and wte is not None and not torch.equal(head, wte):
        raise ValueError("lm_head.weight differs from transformer.wte.weight: the head is untied")
    return out


def to_hf_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict -> ``GPT2LMHeadModel``'s (transposed projections, tied ``lm_head``)."""
    out = {
        k: (v.t().contiguous() if _is_transposed(k) else v)
        for k, v in state_dict.items()
        if k not in TIED_KEYS
    }
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def config_from_hf(hf: Mapping[str, Any]) -> GPTConfig:
    """Our GPTConfig from a Hugging Face GPT-2 ``config.json`` dict.

    A ValueError names any setting the reference model does not implement (another
    activation, LayerNorm eps, MLP width, attention scaling, untied head).
    """
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"model_type {hf.get('model_type')!r} is not 'gpt2'")
    n_embd = int(hf.get("n_embd", 768))
    unsupported = {
        "activation_function": hf.get("activation_function", "gelu_new")
        not in ("gelu_new", "gelu_pytorch_tanh"),
        "layer_norm_epsilon": hf.get("layer_norm_epsilon", LAYER_NORM_EPS) != LAYER_NORM_EPS,
        "n_inner": hf.get("n_inner") not in (None, 4 * n_embd),
        "scale_attn_weights": hf.get("scale_attn_weights", True) is not True,
        "scale_attn_by_inverse_layer_idx": bool(hf.get("scale_attn_by_inverse_layer_idx")),
        "tie_word_embeddings": hf.get("tie_word_embeddings", True) is not True,
        "add_cross_attention": bool(hf.get("add_cross_attention")),
    }
    if bad := {k: hf.get(k) for k, is_bad in unsupported.items() if is_bad}:
        raise ValueError(f"unsupported GPT-2 settings for the reference model: {bad}")
    return GPTConfig(
        block_size=int(hf.get("n_positions", 1024)),
        vocab_size=int(hf.get("vocab_size", 50257)),
        n_layer=int(hf.get("n_layer", 12)),
        n_head=int(hf.get("n_head", 12)),
        n_embd=n_embd,
        dropout=float(hf.get("resid_pdrop", 0.1)),
        bias=True,
    )


def config_to_hf(config: GPTConfig) -> dict[str, Any]:
    """A Hugging Face ``config.json`` dict (``GPT2Config``) for ``config``."""
    if not config.bias:
        raise ValueError("Hugging Face GPT-2 has biases: a bias=False model cannot be exported")
    eot = min(EOT_ID, config.vocab_size - 1)
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
    }


def infer_config(state_dict: Mapping[str, Tensor], n_head: int | None = None) -> GPTConfig:
    """A GPTConfig from the shapes of our state dict; ``n_head`` is not in the shapes.

    Without ``n_head``, GPT-2's published widths give it (768 -> 12, 1024 -> 16, 1280 -> 20,
    1600 -> 25); any other width needs it passed.
    """
    vocab_size, n_embd = state_dict["transformer.wte.weight"].shape
    block_size = state_dict["transformer.wpe.weight"].shape[0]
    layers = {int(m[1]) for k in state_dict if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    if n_head is None:
        if n_embd not in N_HEAD_BY_WIDTH:
            raise ValueError(
                f"cannot infer n_head for n_embd {n_embd} (not a GPT-2 width "
                f"{sorted(N_HEAD_BY_WIDTH)}): pass n_head"
            )
        n_head = N_HEAD_BY_WIDTH[n_embd]
    return GPTConfig(
        block_size=block_size,
        vocab_size=vocab_size,
        n_layer=len(layers),
        n_head=n_head,
        n_embd=n_embd,
        bias="transformer.ln_f.bias" in state_dict,
    )


def _read_safetensors(directory: Path) -> dict[str, Tensor]:
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():  # sharded: {"weight_map": {key: shard file}}
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors: dict[str, Tensor] = {}
        for shard in shards:
            tensors.update(load_file(str(directory / shard)))
        return tensors
    if (directory / "pytorch_model.bin").is_file():
        raise ValueError(
            f"{directory} has only pytorch_model.bin, a pickle, which is never loaded here (it "
            "can run code). Convert it once where you trust it, e.g. with "
            "GPT2LMHeadModel.from_pretrained(path).save_pretrained(path, safe_serialization=True)"
        )
    raise FileNotFoundError(f"no model.safetensors in {directory}")


def load_gpt2(
    path: str | os.PathLike[str], *, n_head: int | None = None, device: str | torch.device = "cpu"
) -> GPT:
    """A GPT-2 checkpoint from a local path, as our GPT in eval mode.

    ``path`` is a Hugging Face directory (``config.json`` + ``model.safetensors``, or sharded
    safetensors) or a bare ``.safetensors`` file, whose config is inferred from the tensor
    shapes (see :func:`infer_config` for ``n_head``).
    """
    path = Path(path)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found: not a Hugging Face checkpoint")
        state = from_hf_state_dict(_read_safetensors(path))
        config = config_from_hf(json.loads(config_file.read_text()))
        if n_head is not None and n_head != config.n_head:
            raise ValueError(f"n_head {n_head} contradicts the config's {config.n_head}")
    elif path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: expected a .safetensors file or a checkpoint directory")
        state = from_hf_state_dict(load_file(str(path)))
        config = infer_config(state, n_head)
    else:
        raise FileNotFoundError(f"{path} does not exist")
    with torch.device("meta"):
        model = GPT(config)
    model = model.to_empty(device=device)
    model.transformer.wte.weight = model.lm_head.weight  # to_empty keeps one tensor per tie
    return load_weights(model, state).eval()


def save_hf(model: GPT, directory: str | os.PathLike[str]) -> Path:
    """Write ``model`` in Hugging Face's layout: ``GPT2LMHeadModel.from_pretrained`` reads it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hf = to_hf_state_dict(model.state_dict())
    hf.pop("lm_head.weight")  # tied: Hugging Face re-ties it from tie_word_embeddings
    save_safetensors(directory / "model.safetensors", hf)
    write_json(directory / "config.json", config_to_hf(model.config))
    return directory
