"""Hugging Face Llama, Mistral and Mixtral layouts: configs and state dicts both ways, models,
files. A dense model with ``sliding_window`` is a ``MistralForCausalLM`` (Llama's weights under
the same names, a sliding-window mask), one with experts a ``MixtralForCausalLM``.

Our parameter names are Hugging Face's (``reference/llama.py``), so the map is key to key, with
two differences:

* a model with ``rope_layout="interleaved"`` (Meta's original pairing of channels 2i, 2i+1)
  has its q and k projection rows permuted into Hugging Face's half-split pairing (i, i + hs/2),
  as ``transformers``' own Llama conversion script does: the attention scores, and so the logits,
  are the same;
* Mixtral's experts: ours are separate SwiGLU modules (``mlp.experts.<e>.{gate,up,down}_proj``);
  transformers >= 5 stores them fused, ``mlp.experts.gate_up_proj`` (E, 2·hidden, C), the gate
  rows first, and ``mlp.experts.down_proj`` (E, C, hidden). The router is ``mlp.gate.weight``
  in both.

``transformers`` is needed only by :func:`to_hf_model` (imported there). Nothing here touches
the network; loading reads safetensors only, never a pickle.

Example::

    hf = to_hf_model(model)                      # LlamaForCausalLM with the same weights
    model = from_hf_model(hf)                    # and back
    save_hf_llama(model, "out/llama")            # LlamaForCausalLM.from_pretrained("out/llama")
    model = load_hf_llama("out/llama")
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
from torch import Tensor, nn

from .atomic import write_json
from .checkpoint import save_safetensors
from .llama import Llama, LlamaConfig
from .rope import RopeScaling

__all__ = [
    "from_hf_model",
    "from_hf_state_dict",
    "hf_model_type",
    "llama_config_from_hf",
    "llama_config_to_hf",
    "load_hf_llama",
    "save_hf_llama",
    "to_hf_model",
    "to_hf_state_dict",
]

EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$")
FUSED = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")
ROTATED = re.compile(r"\.self_attn\.([qk])_proj\.(weight|bias)$")


def llama_config_to_hf(config: LlamaConfig) -> dict[str, Any]:
    """Keyword arguments of ``transformers.LlamaConfig`` (``MixtralConfig`` with experts), which
    are also the keys of its ``config.json`` (plus ``model_type``/``architectures``, added by
    :func:`save_hf_llama`)."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        s = config.rope_scaling
        rope = {"rope_type": s.type, "rope_theta": config.rope_theta, "factor": s.factor}
        if s.type == "yarn":
            rope |= {"original_max_position_embeddings": s.original_max_position_embeddings,
                     "beta_fast": s.beta_fast, "beta_slow": s.beta_slow}
    hf: dict[str, Any] = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_size,
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": rope,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": config.attention_bias,
        "attention_dropout": config.dropout,
        "hidden_act": "silu",
        "initializer_range": 0.02,
    }
    if config.n_experts:
        hf |= {"num_local_experts": config.n_experts,
               "num_experts_per_tok": config.n_experts_per_tok,
               "router_aux_loss_coef": config.router_aux_loss_coef,
               "output_router_logits": True, "sliding_window": config.sliding_window}
    elif config.sliding_window is not None:  # Mistral: no biases anywhere
        hf |= {"sliding_window": config.sliding_window}
        del hf["attention_bias"]
    else:
        hf |= {"mlp_bias": False}
    return hf


def hf_model_type(config: LlamaConfig) -> str:
    """``"mixtral"`` with experts, else ``"mistral"`` with a sliding window, else ``"llama"``."""
    if config.n_experts:
        return "mixtral"
    return "mistral" if config.sliding_window is not None else "llama"


def llama_config_from_hf(hf: Mapping[str, Any]) -> LlamaConfig:
    """Our LlamaConfig from a Hugging Face Llama, Mistral or Mixtral ``config.json`` dict (or a
    ``transformers`` config's ``to_dict()``). A ValueError names any setting the reference model
    does not implement."""
    model_type = hf.get("model_type", "llama")
    if model_type not in ("llama", "mistral", "mixtral"):
        raise ValueError(f"model_type {model_type!r} is not 'llama', 'mistral' or 'mixtral'")
    n_head, n_embd = int(hf["num_attention_heads"]), int(hf["hidden_size"])
    unsupported = {
        "hidden_act": hf.get("hidden_act", "silu") != "silu",
        "mlp_bias": bool(hf.get("mlp_bias")),
        "head_dim": hf.get("head_dim") not in (None, n_embd // n_head),
        "pretraining_tp": hf.get("pretraining_tp", 1) != 1,
        "sliding_window": model_type == "llama" and hf.get("sliding_window") is not None,
    }
    if bad := {k: hf.get(k) for k, is_bad in unsupported.items() if is_bad}:
        raise ValueError(f"unsupported Llama settings for the reference model: {bad}")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})  # 5.x or 4.x
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = None
    if rope_type in ("linear", "yarn"):
        keys = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow")
        scaling = RopeScaling(type=rope_type, **{k: rope[k] for k in keys if rope.get(k)})
    elif rope_type != "default":
        raise ValueError(f"unsupported rope_type {rope_type!r}: 'default', 'linear' or 'yarn'")
    experts: dict[str, Any] = {}
    if model_type == "mixtral":
        experts = {"n_experts": int(hf.get("num_local_experts", 8)),
                   "n_experts_per_tok": int(hf.get("num_experts_per_tok", 2)),
                   "router_aux_loss_coef": float(hf.get("router_aux_loss_coef", 0.001))}
    return LlamaConfig(
        block_size=int(hf.get("max_position_embeddings", 2048)),
        vocab_size=int(hf["vocab_size"]),
        n_layer=int(hf["num_hidden_layers"]),
        n_head=n_head,
        n_kv_head=int(hf.get("num_key_value_heads") or n_head),
        n_embd=n_embd,
        intermediate_size=int(hf["intermediate_size"]),
        rope_theta=theta,
        rope_scaling=scaling,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dropout=float(hf.get("attention_dropout", 0.0)),
        attention_bias=bool(hf.get("attention_bias", False)),
        sliding_window=hf.get("sliding_window") if model_type != "llama" else None,
        **experts,
    )


def _half_from_interleaved(t: Tensor, n_heads: int) -> Tensor:
    """q or k projection rows (n_heads·hs, ...) from pairs (2i, 2i+1) to pairs (i, i + hs/2)."""
    rest = t.shape[1:]
    return t.reshape(n_heads, -1, 2, *rest).transpose(1, 2).reshape(t.shape)


def _interleaved_from_half(t: Tensor, n_heads: int) -> Tensor:
    rest = t.shape[1:]
    return t.reshape(n_heads, 2, -1, *rest).transpose(1, 2).reshape(t.shape)


def _heads(config: LlamaConfig, which: str) -> int:
    return config.n_head if which == "q" else config.n_kv_head


def to_hf_state_dict(state_dict: Mapping[str, Tensor], config: LlamaConfig) -> dict[str, Tensor]:
    """Our state dict -> Hugging Face ``LlamaForCausalLM`` / ``MixtralForCausalLM`` keys."""
    out: dict[str, Tensor] = {}
    experts: dict[tuple[str, int], dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        if m := EXPERT.match(key):
            experts.setdefault((m[1], int(m[2])), {})[m[3]] = value
            continue
        if config.rope_layout == "interleaved" and (m := ROTATED.search(key)):
            value = _half_from_interleaved(value, _heads(config, m[1]))
        out[key] = value
    for prefix in sorted({p for p, _ in experts}):
        n = config.n_experts
        out[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat([experts[prefix, e]["gate"], experts[prefix, e]["up"]]) for e in range(n)]
        )  # (E, 2·hidden, C)
        out[f"{prefix}.down_proj"] = torch.stack([experts[prefix, e]["down"] for e in range(n)])
    return out


def from_hf_state_dict(state_dict: Mapping[str, Tensor], config: LlamaConfig) -> dict[str, Tensor]:
    """A Hugging Face Llama / Mixtral state dict -> ours (the inverse of
    :func:`to_hf_state_dict`). A tied config without ``lm_head.weight`` gets the embedding."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if m := FUSED.match(key):
            for e in range(value.shape[0]):
                if m[2] == "gate_up_proj":
                    gate, up = value[e].chunk(2, dim=0)  # (hidden, C) each
                    out[f"{m[1]}.{e}.gate_proj.weight"] = gate
                    out[f"{m[1]}.{e}.up_proj.weight"] = up
                else:
                    out[f"{m[1]}.{e}.down_proj.weight"] = value[e]
            continue
        if config.rope_layout == "interleaved" and (m := ROTATED.search(key)):
            value = _interleaved_from_half(value, _heads(config, m[1]))
        out[key] = value
    if config.tie_word_embeddings and "lm_head.weight" not in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def from_hf_model(hf_model: nn.Module) -> Llama:
    """Our model with the weights of a ``transformers`` Llama or Mixtral causal LM."""
    config = llama_config_from_hf(hf_model.config.to_dict())  # type: ignore[union-attr,operator]
    model = Llama(config)
    model.load_state_dict(from_hf_state_dict(hf_model.state_dict(), config), strict=True)
    return model


def check_llama_layout(config: LlamaConfig) -> None:
    """Raise ValueError, one line, when ``config`` has options the Llama and Mixtral layouts
    cannot hold (``qk_norm``: ``Llama.to_hf()`` exports that model as Qwen3 instead)."""
    config.check_hf_expressible()
    if config.qk_norm:
        raise ValueError("qk_norm: Hugging Face's Llama and Mixtral layouts have no q/k norms "
                         "(Llama.to_hf() exports such a model as Qwen3)")


def to_hf_model(model: Llama, attn_implementation: str = "sdpa") -> nn.Module:
    """A ``transformers.LlamaForCausalLM`` (``MixtralForCausalLM`` with experts,
    ``MistralForCausalLM`` with a sliding window) holding the weights of ``model``, on the CPU,
    in float32, in the mode of ``model``."""
    import transformers

    config = model.config
    check_llama_layout(config)
    kwargs = llama_config_to_hf(config)
    hf_config: Any
    cls: Any
    if config.n_experts:
        hf_config = transformers.MixtralConfig(**kwargs)
        cls = transformers.MixtralForCausalLM
    elif config.sliding_window is not None:
        hf_config = transformers.MistralConfig(**kwargs)
        cls = transformers.MistralForCausalLM
    else:
        hf_config = transformers.LlamaConfig(**kwargs)
        cls = transformers.LlamaForCausalLM
    hf_config._attn_implementation = attn_implementation
    hf: nn.Module = cls(hf_config)
    state = to_hf_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()},
                             config)
    hf.load_state_dict(state, strict=True)
    return hf.train(model.training)


def save_hf_llama(model: Llama, directory: str | os.PathLike[str]) -> Path:
    """Write ``model`` in Hugging Face's layout (``config.json`` + ``model.safetensors``):
    ``LlamaForCausalLM.from_pretrained(directory)`` (or Mixtral's) reads it."""
    check_llama_layout(model.config)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = to_hf_state_dict(model.state_dict(), model.config)
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight")  # Hugging Face re-ties it from tie_word_embeddings
    save_safetensors(directory / "model.safetensors", state)
    model_type = hf_model_type(model.config)
    write_json(directory / "config.json", {
        "model_type": model_type,
        "architectures": [f"{model_type.capitalize()}ForCausalLM"],
        **llama_config_to_hf(model.config),
    })
    return directory


def load_hf_llama(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> Llama:
    """A Hugging Face Llama / Mixtral directory (``config.json`` + ``model.safetensors``) as our
    model, in eval mode."""
    directory = Path(directory)
    config_file, weights = directory / "config.json", directory / "model.safetensors"
    for path in (config_file, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not a Hugging Face Llama checkpoint")
    config = llama_config_from_hf(json.loads(config_file.read_text()))
    model = Llama(config)
    model.load_state_dict(from_hf_state_dict(load_file(str(weights)), config), strict=True)
    return model.to(device).eval()
