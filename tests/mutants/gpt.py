"""Classic learner bugs in the GPT component; specs/test_gpt.py must catch every one.

Each mutant replaces functions of ``solutions.gpt`` (the package's names, used by the spec) and of
the submodules that call them (``model.block_forward``, ``sampling.gpt_forward``...), as a broken
solution would. Named for the bug, commented with the spec test expected to catch it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from reference.model import GPTConfig
from solutions import attention
from solutions.gpt import block as sol_block
from solutions.gpt import layers as sol_layers
from solutions.gpt import model as sol_model
from solutions.gpt import sampling as sol_sampling

Params = Mapping[str, Tensor]


# ---------------------------------------------------------------- layers


def _layer_norm(unbiased: bool = False, eps_outside: bool = False) -> Callable[..., Tensor]:
    def layer_norm(
        x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5
    ) -> Tensor:
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=unbiased)
        y = (x - mean) / (var.sqrt() + eps if eps_outside else (var + eps).sqrt())
        y = y if weight is None else y * weight
        return y if bias is None else y + bias

    return layer_norm


def _gelu_erf(x: Tensor) -> Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))  # exact GELU, not GPT-2's tanh


def _sinusoidal(swap: bool = False, freq_index: bool = False) -> Callable[[int, int], Tensor]:
    def sinusoidal_positional_encoding(n_positions: int, d_model: int) -> Tensor:
        if d_model < 2 or d_model % 2:
            raise ValueError(f"bad d_model {d_model}")
        i = torch.arange(0, d_model, 2, dtype=torch.float64)
        i = i / 2 if freq_index else i  # ω = 10000^(-i/d) instead of 10000^(-2i/d)
        angles = torch.arange(n_positions, dtype=torch.float64)[:, None] * 10000 ** (-i / d_model)
        pe = torch.empty(n_positions, d_model, dtype=torch.float64)
        pe[:, 0::2], pe[:, 1::2] = (
            (angles.cos(), angles.sin()) if swap else (angles.sin(), angles.cos())
        )
        return pe.float()

    return sinusoidal_positional_encoding


# ---------------------------------------------------------------- block


def _attention_without_mask(
    x: Tensor, w_attn: Tensor, b_attn: Tensor, w_proj: Tensor, b_proj: Tensor, n_head: int
) -> Tensor:
    C = x.size(-1)
    q, k, v = (attention.split_heads(t, n_head) for t in (x @ w_attn.T + b_attn).split(C, -1))
    y = attention.merge_heads(attention.scaled_dot_product_attention(q, k, v))  # sees the future
    return y @ w_proj.T + b_proj


def _block(post_ln: bool = False, no_attn_residual: bool = False) -> Callable[..., Tensor]:
    ln, csa, mlp = sol_layers.layer_norm, attention.causal_self_attention, sol_block.mlp_forward

    def block_forward(x: Tensor, p: Params, n_head: int) -> Tensor:
        def attn(h: Tensor) -> Tensor:
            w, b = p["attn.c_attn.weight"], p["attn.c_attn.bias"]
            return csa(h, w, b, p["attn.c_proj.weight"], p["attn.c_proj.bias"], n_head)

        if post_ln:  # the original transformer: normalize after the residual add
            x = ln(x + attn(x), p["ln_1.weight"], p["ln_1.bias"])
            return ln(x + mlp(x, p), p["ln_2.weight"], p["ln_2.bias"])
        h = attn(ln(x, p["ln_1.weight"], p["ln_1.bias"]))
        x = h if no_attn_residual else x + h
        return x + mlp(ln(x, p["ln_2.weight"], p["ln_2.bias"]), p)

    return block_forward


def _mlp_relu(x: Tensor, p: Params) -> Tensor:
    h = torch.relu(x @ p["mlp.c_fc.weight"].T + p["mlp.c_fc.bias"])
    return h @ p["mlp.c_proj.weight"].T + p["mlp.c_proj.bias"]


# ---------------------------------------------------------------- model


def _forward(
    positions: int = 1,
    head: str = "tied",
    shift_inside: bool = False,
    final_ln: bool = True,
) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """gpt_forward with one thing wrong: positions added 0 or 2 times, an untied head..."""

    def gpt_forward(
        idx: Tensor, params: Params, config: GPTConfig, targets: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        sol_model.check_idx(idx, config)
        T = idx.shape[1]
        wte = params["transformer.wte.weight"]
        x = wte[idx] + positions * params["transformer.wpe.weight"][:T]
        for i in range(config.n_layer):
            prefix = f"transformer.h.{i}."
            blk = {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}
            x = sol_block.block_forward(x, blk, config.n_head)
        if final_ln:
            x = sol_layers.layer_norm(
                x, params["transformer.ln_f.weight"], params["transformer.ln_f.bias"]
            )
        # an untied head: a separate copy of the embedding, so its gradient never reaches wte
        logits = x @ (wte if head == "tied" else wte.detach().clone()).T
        if targets is None:
            return logits, None
        if shift_inside:  # shifting targets the data loader already shifted (HF's convention)
            logits, targets = logits[:, :-1], targets[:, 1:]
        loss = sol_model.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    return gpt_forward


def _cross_entropy(reduction: str = "mean", ignore: bool = True) -> Callable[..., Tensor]:
    def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -1) -> Tensor:
        if not ignore:  # -1 wraps around to the last token instead of being skipped
            return F.cross_entropy(logits, targets % logits.size(-1), reduction=reduction)
        return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)

    return cross_entropy


def _count_untied(config: GPTConfig) -> int:
    return (
        sol_model.count_parameters(config) + config.vocab_size * config.n_embd
    )  # lm_head counted as its own matrix


def _init(c_proj_scaled: bool = True, head: bool = False) -> Callable[..., dict[str, Tensor]]:
    real = sol_model.init_params

    def init_params(config: GPTConfig, seed: int = 0) -> dict[str, Tensor]:
        params = real(config, seed)
        if not c_proj_scaled:  # forgot GPT-2's 1/sqrt(2·n_layer) on the residual projections
            g = torch.Generator().manual_seed(seed)
            for k, v in params.items():
                if k.endswith("c_proj.weight"):
                    params[k] = torch.empty_like(v).normal_(0.0, 0.02, generator=g)
        if head:  # an untied LM head of its own
            params["lm_head.weight"] = params["transformer.wte.weight"].clone()
        return params

    return init_params


def _check_idx(off_by_one: bool = False, allow_negative: bool = False) -> Callable[..., None]:
    def check_idx(idx: Tensor, config: GPTConfig) -> None:
        if idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"bad dtype {idx.dtype}")
        if idx.numel() == 0:
            raise ValueError("empty input")
        T = idx.shape[1]
        if config.block_size <= T if off_by_one else config.block_size < T:
            raise ValueError(f"sequence length {T} exceeds block_size {config.block_size}")
        lo = 0 if allow_negative else int(idx.min())
        if lo < 0 or int(idx.max()) >= config.vocab_size:
            raise ValueError(f"token id {int(idx.max())} outside [0, {config.vocab_size})")

    return check_idx


# ---------------------------------------------------------------- sampling


def _top_k(delta: int) -> Callable[[Tensor, int], Tensor]:
    def top_k_filter(logits: Tensor, k: int) -> Tensor:
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {k}")
        kk = max(1, min(k + delta, logits.size(-1)))
        kth = torch.topk(logits, kk, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))

    return top_k_filter


def _top_p(mode: str) -> Callable[[Tensor, float], Tensor]:
    def top_p_filter(logits: Tensor, p: float) -> Tensor:
        if not 0.0 < p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {p}")
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        cum = probs.cumsum(-1)
        if mode == "excludes_crossing":  # mass *including* the token: drops the one crossing p
            remove = cum > p
            remove[..., 0] = False
        else:  # "one_too_many": keeps the token after the crossing one as well
            remove = (cum - probs) >= p
            remove = torch.cat([torch.zeros_like(remove[..., :1]), remove[..., :-1]], dim=-1)
        return logits.masked_fill(torch.zeros_like(remove).scatter(-1, order, remove), -math.inf)

    return top_p_filter


def _sample(
    temperature_multiplies: bool = False, ignore_generator: bool = False, filters: bool = True
) -> Callable[..., Tensor]:
    def sample_next_token(
        logits: Tensor,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if temperature == 0:
            return logits.argmax(-1)
        logits = logits * temperature if temperature_multiplies else logits / temperature
        if filters and top_k is not None:
            logits = sol_sampling.top_k_filter(logits, top_k)
        if filters and top_p is not None:
            logits = sol_sampling.top_p_filter(logits, top_p)
        g = None if ignore_generator else generator  # the global RNG: no reproducibility
        return torch.multinomial(logits.softmax(-1), 1, generator=g).squeeze(-1)

    return sample_next_token


def _generate(crop: bool = True, eos: bool = True) -> Callable[..., Tensor]:
    def generate(
        idx: Tensor,
        params: Params,
        config: GPTConfig,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        eos_id: int | None = None,
    ) -> Tensor:
        with torch.no_grad():
            for _ in range(max_new_tokens):
                context = idx[:, -config.block_size :] if crop else idx
                logits, _ = sol_model.gpt_forward(context, params, config)
                nxt = sol_sampling.sample_next_token(
                    logits[:, -1], temperature, top_k, top_p, generator
                )
                idx = torch.cat([idx, nxt[:, None]], dim=1)
                if eos and eos_id is not None and bool((nxt == eos_id).all()):
                    break  # stops only when every row emits eos at the same step, no padding
        return idx

    return generate


def _everywhere(name: str, fn: Any, *modules: str) -> dict[str, Any]:
    """Patch ``name`` in the package and in each submodule that calls it."""
    return {name: fn, **{f"{m}.{name}": fn for m in modules}}


MUTANTS: dict[str, dict[str, Any]] = {
    # layer norm / gelu: test_layer_norm_*, test_gelu_* and every HF parity test
    "layer_norm_unbiased_variance": _everywhere(
        "layer_norm", _layer_norm(unbiased=True), "block", "model", "layers"
    ),
    "layer_norm_eps_outside_sqrt": _everywhere(
        "layer_norm", _layer_norm(eps_outside=True), "block", "model", "layers"
    ),
    "gelu_exact_erf": _everywhere("gelu", _gelu_erf, "block", "layers"),
    # positional encoding: test_sinusoidal_*
    "sinusoidal_sin_cos_swapped": {"sinusoidal_positional_encoding": _sinusoidal(swap=True)},
    "sinusoidal_wrong_frequencies": {
        "sinusoidal_positional_encoding": _sinusoidal(freq_index=True)
    },
    # block: test_gpt_forward_is_causal, test_block_matches_hf_gpt2_block
    "missing_causal_mask": {"block.causal_self_attention": _attention_without_mask},
    "post_ln_instead_of_pre_ln": _everywhere("block_forward", _block(post_ln=True), "model"),
    "attention_residual_dropped": _everywhere(
        "block_forward", _block(no_attn_residual=True), "model"
    ),
    "mlp_relu_instead_of_gelu": _everywhere("mlp_forward", _mlp_relu, "block"),
    # model: test_gpt_forward_matches_hf_gpt2, test_gpt_gradients_match_hf_gpt2, loss tests
    "positional_embedding_added_twice": _everywhere(
        "gpt_forward", _forward(positions=2), "sampling"
    ),
    "positional_embedding_missing": _everywhere("gpt_forward", _forward(positions=0), "sampling"),
    "final_layer_norm_missing": _everywhere("gpt_forward", _forward(final_ln=False), "sampling"),
    "untied_head_in_forward": _everywhere("gpt_forward", _forward(head="untied"), "sampling"),
    "loss_shifted_twice": _everywhere("gpt_forward", _forward(shift_inside=True), "sampling"),
    "loss_summed_not_averaged": _everywhere("cross_entropy", _cross_entropy("sum"), "model"),
    "loss_counts_ignored_targets": _everywhere(
        "cross_entropy", _cross_entropy(ignore=False), "model"
    ),
    "check_idx_off_by_one": _everywhere("check_idx", _check_idx(off_by_one=True), "model"),
    "check_idx_allows_negative_ids": _everywhere(
        "check_idx", _check_idx(allow_negative=True), "model"
    ),
    # init and size: test_init_params_*, test_gpt2_small_has_124439808_parameters
    "untied_head_counted": {"count_parameters": _count_untied},
    "untied_head_in_init": {"init_params": _init(head=True)},
    "residual_projections_not_scaled": {"init_params": _init(c_proj_scaled=False)},
    # sampling: test_top_k_*, test_top_p_*, test_sampling_*, test_fixed_seed_*
    "top_k_keeps_one_too_many": _everywhere("top_k_filter", _top_k(+1), "sampling"),
    "top_k_keeps_one_too_few": _everywhere("top_k_filter", _top_k(-1), "sampling"),
    "top_p_excludes_crossing_token": _everywhere(
        "top_p_filter", _top_p("excludes_crossing"), "sampling"
    ),
    "top_p_keeps_one_too_many": _everywhere("top_p_filter", _top_p("one_too_many"), "sampling"),
    "temperature_multiplies": _everywhere(
        "sample_next_token", _sample(temperature_multiplies=True), "sampling"
    ),
    "sampling_ignores_generator": _everywhere(
        "sample_next_token", _sample(ignore_generator=True), "sampling"
    ),
    "sampling_skips_filters": _everywhere("sample_next_token", _sample(filters=False), "sampling"),
    # generation: test_generate_*
    "generate_without_cropping": {"generate": _generate(crop=False)},
    "generate_without_eos_padding": {"generate": _generate(eos=True)},
}
