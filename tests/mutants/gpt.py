"""Classic learner bugs in the GPT component; specs/test_gpt.py must catch every one.

Each mutant replaces a function of ``solutions.gpt`` (the package's name); the harness patches
every other reference to that function object too (``block.layer_norm``, ``sampling.gpt_forward``),
as a broken solution would be seen by its callers. Named for the bug, grouped by the spec tests
expected to catch it. ``EQUIVALENT`` lists the mutation tool's survivors that no test can tell
from the solution (``scripts/mutation.py``), each with the reason.
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

# The originals, kept before any mutant replaces them (a mutant calls the right versions of
# the functions it does not break).
layer_norm = sol_layers.layer_norm
mlp_forward, block_forward = sol_block.mlp_forward, sol_block.block_forward
check_idx, cross_entropy = sol_model.check_idx, sol_model.cross_entropy
gpt_forward, count_parameters = sol_model.gpt_forward, sol_model.count_parameters
init_params_original = sol_model.init_params
top_k_filter, top_p_filter = sol_sampling.top_k_filter, sol_sampling.top_p_filter
sample_next_token = sol_sampling.sample_next_token
causal_self_attention = attention.causal_self_attention


# ---------------------------------------------------------------- layers


def _layer_norm(
    unbiased: bool = False, eps_outside: bool = False, one_pass: bool = False
) -> Callable[..., Tensor]:
    def layer_norm(
        x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5
    ) -> Tensor:
        mean = x.mean(-1, keepdim=True)
        if one_pass:  # E[x²] - E[x]²: cancels catastrophically when the mean is large
            var = (x * x).mean(-1, keepdim=True) - mean * mean
        else:
            var = x.var(-1, keepdim=True, unbiased=unbiased)
        y = (x - mean) / (var.sqrt() + eps if eps_outside else (var + eps).sqrt())
        y = y if weight is None else y * weight
        return y if bias is None else y + bias

    return layer_norm


def _layer_norm_shift_needs_scale(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5
) -> Tensor:
    y = layer_norm(x, None, None, eps)
    return y if weight is None else y * weight + (0 if bias is None else bias)  # no scale: no bias


def _gelu_erf(x: Tensor) -> Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))  # exact GELU, not GPT-2's tanh


def _gelu_tanh_from_exp(x: Tensor) -> Tensor:
    a = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
    e = torch.exp(2 * a)  # inf past a ≈ 44 in float32: inf / inf = nan
    return 0.5 * x * (1 + (e - 1) / (e + 1))


def _sinusoidal(
    swap: bool = False, freq_index: bool = False, dtype: torch.dtype = torch.float64
) -> Callable[[int, int], Tensor]:
    def sinusoidal_positional_encoding(n_positions: int, d_model: int) -> Tensor:
        if n_positions < 0 or d_model < 2 or d_model % 2:
            raise ValueError(f"bad sizes {n_positions}, {d_model}")
        i = torch.arange(0, d_model, 2, dtype=dtype)
        i = i / 2 if freq_index else i  # ω = 10000^(-i/d) instead of 10000^(-2i/d)
        angles = torch.arange(n_positions, dtype=dtype)[:, None] * 10000 ** (-i / d_model)
        pe = torch.empty(n_positions, d_model, dtype=dtype)
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
    def block_forward(x: Tensor, p: Params, n_head: int) -> Tensor:
        def attn(h: Tensor) -> Tensor:
            w, b = p["attn.c_attn.weight"], p["attn.c_attn.bias"]  # KeyError without biases
            return causal_self_attention(h, w, b, p["attn.c_proj.weight"], p["attn.c_proj.bias"],
                                         n_head)

        if post_ln:  # the original transformer: normalize after the residual add
            x = layer_norm(x + attn(x), p["ln_1.weight"], p["ln_1.bias"])
            return layer_norm(x + mlp_forward(x, p), p["ln_2.weight"], p["ln_2.bias"])
        h = attn(layer_norm(x, p["ln_1.weight"], p["ln_1.bias"]))
        x = h if no_attn_residual else x + h
        return x + mlp_forward(layer_norm(x, p["ln_2.weight"], p["ln_2.bias"]), p)

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
    dropout: bool = False,
) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """gpt_forward with one thing wrong: positions added 0 or 2 times, an untied head..."""

    def gpt_forward(
        idx: Tensor, params: Params, config: GPTConfig, targets: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        check_idx(idx, config)
        T = idx.shape[1]
        wte = params["transformer.wte.weight"]
        x = wte[idx] + positions * params["transformer.wpe.weight"][:T]
        if dropout:  # F.dropout trains by default: the "eval" pass drops activations
            x = F.dropout(x, config.dropout)
        for i in range(config.n_layer):
            prefix = f"transformer.h.{i}."
            blk = {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}
            x = block_forward(x, blk, config.n_head)
        if final_ln:
            x = layer_norm(
                x, params["transformer.ln_f.weight"], params.get("transformer.ln_f.bias")
            )
        # an untied head: a separate copy of the embedding, so its gradient never reaches wte
        logits = x @ (wte if head == "tied" else wte.detach().clone()).T
        if targets is None:
            return logits, None
        if shift_inside:  # shifting targets the data loader already shifted (HF's convention)
            logits, targets = logits[:, :-1], targets[:, 1:]
        loss = cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    return gpt_forward


def _cross_entropy(
    reduction: str = "mean", ignore: bool = True, fixed_ignore: bool = False
) -> Callable[..., Tensor]:
    def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -1) -> Tensor:
        if not ignore:  # -1 wraps around to the last token instead of being skipped
            return F.cross_entropy(logits, targets % logits.size(-1), reduction=reduction)
        if fixed_ignore:  # the argument is ignored: always -1
            ignore_index = -1
        return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)

    return cross_entropy


def _cross_entropy_naive(logits: Tensor, targets: Tensor, ignore_index: int = -1) -> Tensor:
    keep = targets != ignore_index
    probs = logits.exp() / logits.exp().sum(-1, keepdim=True)  # exp(1000) = inf: nan, or log 0
    nll = -probs.gather(1, targets.masked_fill(~keep, 0)[:, None]).squeeze(1).log()
    return (nll * keep).sum() / keep.sum()


def _cross_entropy_clamped(logits: Tensor, targets: Tensor, ignore_index: int = -1) -> Tensor:
    keep = targets != ignore_index
    safe = targets.clamp(min=0).unsqueeze(1)  # an ignore_index past the vocabulary: IndexError
    nll = logits.logsumexp(-1) - logits.gather(1, safe).squeeze(1)
    return (nll * keep).sum() / keep.sum()


def _count_untied(config: GPTConfig) -> int:
    return count_parameters(config) + config.vocab_size * config.n_embd  # lm_head counted twice


def _init(
    c_proj_std: Callable[[int], float] = lambda n_layer: 0.02 / math.sqrt(2 * n_layer),
    head: bool = False,
    uniform: bool = False,
) -> Callable[..., dict[str, Tensor]]:
    def init_params(config: GPTConfig, seed: int = 0) -> dict[str, Tensor]:
        params = init_params_original(config, seed)
        g = torch.Generator().manual_seed(seed)
        for k, v in params.items():
            std = c_proj_std(config.n_layer) if k.endswith("c_proj.weight") else 0.02
            if v.ndim < 2:
                continue
            if uniform:  # the right std, the wrong law: U(-a, a) with a = std·sqrt(3)
                a = std * math.sqrt(3)
                params[k] = torch.empty_like(v).uniform_(-a, a, generator=g)
            elif k.endswith("c_proj.weight"):
                params[k] = torch.empty_like(v).normal_(0.0, std, generator=g)
        if head:  # an untied LM head of its own
            params["lm_head.weight"] = params["transformer.wte.weight"].clone()
        return params

    return init_params



def _check_idx(
    off_by_one: bool = False, allow_negative: bool = False, int64_only: bool = False
) -> Callable[..., None]:
    def check_idx(idx: Tensor, config: GPTConfig) -> None:
        if not isinstance(idx, Tensor):
            raise TypeError(f"idx must be a tensor, got {type(idx).__name__}")
        allowed = (torch.int64,) if int64_only else (torch.int64, torch.int32)
        if idx.dtype not in allowed:
            raise TypeError(f"bad dtype {idx.dtype}")
        if idx.ndim != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
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


def _top_k(delta: int = 0, drop_ties: bool = False) -> Callable[[Tensor, int], Tensor]:
    def top_k_filter(logits: Tensor, k: int) -> Tensor:
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {k}")
        kk = max(1, min(k + delta, logits.size(-1)))
        if drop_ties:  # exactly k kept: which of the tied ones depends on topk's order
            keep = torch.zeros_like(logits, dtype=torch.bool)
            keep.scatter_(-1, torch.topk(logits, kk, dim=-1).indices, True)
            return logits.masked_fill(~keep, float("-inf"))
        kth = torch.topk(logits, kk, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))

    return top_k_filter


def _top_p(mode: str) -> Callable[[Tensor, float], Tensor]:
    def top_p_filter(logits: Tensor, p: float) -> Tensor:
        if not 0.0 < p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {p}")
        if mode != "rounds_at_one" and p == 1.0:
            return logits
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        if mode == "naive_exp":  # exp of logits in the hundreds: inf / inf = nan
            e = sorted_logits.exp()
            probs = e / e.sum(-1, keepdim=True)
        else:
            probs = sorted_logits.softmax(-1)
        cum = probs.cumsum(-1)
        if mode == "excludes_crossing":  # mass *including* the token: drops the one crossing p
            remove = cum > p
            remove[..., 0] = False
        elif mode == "keeps_threshold":  # the token whose preceding mass is exactly p stays
            remove = (cum - probs) > p
        elif mode == "one_too_many":  # keeps the token after the crossing one as well
            remove = (cum - probs) >= p
            remove = torch.cat([torch.zeros_like(remove[..., :1]), remove[..., :-1]], dim=-1)
        else:  # "naive_exp", "rounds_at_one" (p = 1 computed: a mass rounding to 1 drops a token)
            remove = (cum - probs) >= p
        return logits.masked_fill(torch.zeros_like(remove).scatter(-1, order, remove), -math.inf)

    return top_p_filter


def _sample(
    temperature_multiplies: bool = False,
    ignore_generator: bool = False,
    filters: bool = True,
    top_p_first: bool = False,
    temperature_last: bool = False,
    naive_softmax: bool = False,
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
        if not temperature_last:
            logits = logits * temperature if temperature_multiplies else logits / temperature
        steps = [(top_k_filter, top_k), (top_p_filter, top_p)]
        for fn, arg in reversed(steps) if top_p_first else steps:
            if filters and arg is not None:
                logits = fn(logits, arg)  # type: ignore[operator]
        if temperature_last:  # the filters saw the logits before the temperature
            logits = logits / temperature
        if naive_softmax:  # exp of logits in the hundreds overflows float32
            probs = logits.exp() / logits.exp().sum(-1, keepdim=True)
        else:
            probs = logits.softmax(-1)
        g = None if ignore_generator else generator  # the global RNG: no reproducibility
        return torch.multinomial(probs, 1, generator=g).squeeze(-1)

    return sample_next_token


def _generate(
    crop: Callable[[Tensor, int], Tensor] = lambda idx, block: idx[:, -block:],
    eos: str = "pad",
    keep_dtype: bool = True,
    done_device: bool = True,
    pass_top_p: bool = True,
    restart_generator: bool = False,
) -> Callable[..., Tensor]:
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
        if restart_generator and generator is not None:  # restarts the stream every call
            generator = torch.Generator().manual_seed(generator.initial_seed())
        done = torch.zeros(idx.shape[0], dtype=torch.bool,
                           device=idx.device if done_device else None)
        with torch.no_grad():
            for _ in range(max_new_tokens):
                logits, _ = gpt_forward(crop(idx, config.block_size), params, config)
                nxt = sample_next_token(logits[:, -1], temperature, top_k,
                                        top_p if pass_top_p else None, generator)
                if eos_id is not None and eos in ("pad", "no_stop"):
                    nxt = torch.where(done, eos_id, nxt)
                    done = done | (nxt == eos_id)
                idx = torch.cat([idx, nxt[:, None].to(idx.dtype) if keep_dtype else nxt[:, None]],
                                dim=1)
                if eos_id is None or eos == "no_stop":
                    continue
                if eos == "pad" and bool(done.all()):
                    break
                if eos == "same_step" and bool((nxt == eos_id).all()):
                    break  # stops only when every row emits eos at the same step, no padding
        return idx

    return generate


MUTANTS: dict[str, dict[str, Any]] = {
    # layer norm / gelu: test_layer_norm_*, test_gelu_* and every HF parity test
    "layer_norm_unbiased_variance": {"layer_norm": _layer_norm(unbiased=True)},
    "layer_norm_eps_outside_sqrt": {"layer_norm": _layer_norm(eps_outside=True)},
    "layer_norm_one_pass_variance": {"layer_norm": _layer_norm(one_pass=True)},
    "layer_norm_shift_only_with_scale": {"layer_norm": _layer_norm_shift_needs_scale},
    "gelu_exact_erf": {"gelu": _gelu_erf},
    "gelu_tanh_from_exp_overflows": {"gelu": _gelu_tanh_from_exp},
    # positional encoding: test_sinusoidal_*
    "sinusoidal_sin_cos_swapped": {"sinusoidal_positional_encoding": _sinusoidal(swap=True)},
    "sinusoidal_wrong_frequencies": {
        "sinusoidal_positional_encoding": _sinusoidal(freq_index=True)
    },
    "sinusoidal_float32_angles": {
        "sinusoidal_positional_encoding": _sinusoidal(dtype=torch.float32)
    },
    # block: test_gpt_forward_is_causal, test_block_matches_hf_gpt2_block, bias-free options
    "missing_causal_mask": {"block.causal_self_attention": _attention_without_mask},
    "post_ln_instead_of_pre_ln": {"block_forward": _block(post_ln=True)},
    "attention_residual_dropped": {"block_forward": _block(no_attn_residual=True)},
    "mlp_relu_instead_of_gelu": {"mlp_forward": _mlp_relu},
    # model: test_gpt_forward_matches_hf_gpt2, test_gpt_gradients_match_hf_gpt2, loss tests
    "positional_embedding_added_twice": {"gpt_forward": _forward(positions=2)},
    "positional_embedding_missing": {"gpt_forward": _forward(positions=0)},
    "final_layer_norm_missing": {"gpt_forward": _forward(final_ln=False)},
    "untied_head_in_forward": {"gpt_forward": _forward(head="untied")},
    "loss_shifted_twice": {"gpt_forward": _forward(shift_inside=True)},
    "dropout_in_the_eval_pass": {"gpt_forward": _forward(dropout=True)},
    "loss_summed_not_averaged": {"cross_entropy": _cross_entropy("sum")},
    "loss_counts_ignored_targets": {"cross_entropy": _cross_entropy(ignore=False)},
    "loss_ignores_the_ignore_index_argument": {"cross_entropy": _cross_entropy(fixed_ignore=True)},
    "loss_from_exp_overflows": {"cross_entropy": _cross_entropy_naive},
    "loss_clamps_ignored_targets": {"cross_entropy": _cross_entropy_clamped},
    "check_idx_off_by_one": {"check_idx": _check_idx(off_by_one=True)},
    "check_idx_allows_negative_ids": {"check_idx": _check_idx(allow_negative=True)},
    "check_idx_rejects_int32": {"check_idx": _check_idx(int64_only=True)},
    # init and size: test_init_params_*, test_gpt2_small_has_124439808_parameters
    "untied_head_counted": {"count_parameters": _count_untied},
    "untied_head_in_init": {"init_params": _init(head=True)},
    "residual_projections_not_scaled": {"init_params": _init(c_proj_std=lambda n: 0.02)},
    "residual_projections_over_sqrt_n_layer": {
        "init_params": _init(c_proj_std=lambda n: 0.02 / math.sqrt(n))
    },
    "init_uniform_with_the_right_std": {"init_params": _init(uniform=True)},
    # sampling: test_top_k_*, test_top_p_*, test_sampling_*, test_fixed_seed_*
    "top_k_keeps_one_too_many": {"top_k_filter": _top_k(+1)},
    "top_k_keeps_one_too_few": {"top_k_filter": _top_k(-1)},
    "top_k_drops_ties_at_the_kth": {"top_k_filter": _top_k(drop_ties=True)},
    "top_p_excludes_crossing_token": {"top_p_filter": _top_p("excludes_crossing")},
    "top_p_keeps_one_too_many": {"top_p_filter": _top_p("one_too_many")},
    "top_p_keeps_the_token_at_exactly_p": {"top_p_filter": _top_p("keeps_threshold")},
    "top_p_from_exp_overflows": {"top_p_filter": _top_p("naive_exp")},
    "top_p_one_drops_rounded_tokens": {"top_p_filter": _top_p("rounds_at_one")},
    "temperature_multiplies": {"sample_next_token": _sample(temperature_multiplies=True)},
    "temperature_after_the_filters": {"sample_next_token": _sample(temperature_last=True)},
    "top_p_before_top_k": {"sample_next_token": _sample(top_p_first=True)},
    "sampling_softmax_from_exp_overflows": {"sample_next_token": _sample(naive_softmax=True)},
    "sampling_ignores_generator": {"sample_next_token": _sample(ignore_generator=True)},
    "sampling_skips_filters": {"sample_next_token": _sample(filters=False)},
    # generation: test_generate_*, test_no_tensor_is_made_on_the_default_device
    "generate_without_cropping": {"generate": _generate(crop=lambda idx, block: idx)},
    "generate_crops_one_token_short": {
        "generate": _generate(crop=lambda idx, block: idx[:, -(block - 1) :])
    },
    "generate_keeps_the_first_block": {
        "generate": _generate(crop=lambda idx, block: idx[:, :block])
    },
    "generate_without_eos_padding": {"generate": _generate(eos="same_step")},
    "generate_never_stops_at_eos": {"generate": _generate(eos="no_stop")},
    "generate_drops_top_p": {"generate": _generate(pass_top_p=False)},
    "generate_returns_int64": {"generate": _generate(keep_dtype=False)},
    "generate_done_on_the_default_device": {"generate": _generate(done_device=False)},
    "generate_restarts_the_generator": {"generate": _generate(restart_generator=True)},
}

# Hints that teach: for each classic bug, the cause (a regex, case-insensitive) that the first
# spec test to catch it must name in its failure message (tests/test_mutants.py).
HINTS: dict[str, str] = {
    "layer_norm_unbiased_variance": r"unbiased variance",
    "layer_norm_eps_outside_sqrt": r"eps added outside the square root",
    "layer_norm_one_pass_variance": r"one-pass variance",
    "layer_norm_shift_only_with_scale": r"shift \(bias\) applied only with a scale",
    "gelu_exact_erf": r"exact erf GELU",
    "gelu_tanh_from_exp_overflows": r"overflows",
    "sinusoidal_sin_cos_swapped": r"sin and cos swapped",
    "sinusoidal_wrong_frequencies": r"frequencies",
    "sinusoidal_float32_angles": r"computed in float32",
    "missing_causal_mask": r"without the causal mask",
    "post_ln_instead_of_pre_ln": r"post-LN",
    "attention_residual_dropped": r"residual connection is dropped",
    "mlp_relu_instead_of_gelu": r"ReLU instead of GELU",
    "positional_embedding_added_twice": r"position embeddings added twice",
    "positional_embedding_missing": r"position embeddings are missing",
    "final_layer_norm_missing": r"final LayerNorm",
    "untied_head_in_forward": r"not tied to wte",
    "loss_shifted_twice": r"shifted again",
    "dropout_in_the_eval_pass": r"dropout in the forward pass",
    "loss_summed_not_averaged": r"summed over the tokens instead of averaged",
    "check_idx_off_by_one": r"off by one.*block_size",
    "check_idx_allows_negative_ids": r"negative ids are not rejected",
    "untied_head_counted": r"LM head counted on its own",
    "untied_head_in_init": r"lm_head\.weight of its own",
    "residual_projections_not_scaled": r"0\.02/sqrt\(2·n_layer\)",
    "residual_projections_over_sqrt_n_layer": r"0\.02/sqrt\(2·n_layer\)",
    "init_uniform_with_the_right_std": r"uniform law",
    "top_k_keeps_one_too_many": r"one token too many kept",
    "top_k_keeps_one_too_few": r"one token too few kept",
    "temperature_multiplies": r"multiplied by the temperature",
    "temperature_after_the_filters": r"temperature applied after the filters",
    "top_p_before_top_k": r"top-p applied before top-k",
    "generate_returns_int64": r"appended in int64",
    "check_idx_rejects_int32": r"int32 ids rejected",
    "top_p_excludes_crossing_token": r"token that crosses p dropped",
    "top_p_keeps_one_too_many": r"one token too many kept",
    "top_p_keeps_the_token_at_exactly_p": r"preceding mass is exactly p kept",
    "top_p_one_drops_rounded_tokens": r"p = 1 keeps everything",
}

_LAST_DIM = "logits are (N, V) / (B, V) by contract: dim 1 is the last dim, -1"
_DEFAULT_DIM = "torch.topk and torch.sort work on the last dim by default, as dim=-1 says"
_INF = 'float("-INF") is float("-inf"): Python parses the name case-insensitively'
EQUIVALENT: dict[tuple[str, str], str] = {
    ("cross_entropy", "nll = logits.logsumexp(dim=+1) - logits.gather(1, safe).squeeze(1)"):
        _LAST_DIM,
    ("sample_next_token", "return logits.argmax(dim=+1)"): _LAST_DIM,
    ("sample_next_token", "probs = logits.softmax(dim=+1)"): _LAST_DIM,
    ("sample_next_token",
     "return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(+1)"):
        "multinomial returns (B, 1): squeezing dim 1 is squeezing dim -1",
    ("top_k_filter", "kth_largest = torch.topk(logits, k, ).values[..., -1:]"): _DEFAULT_DIM,
    ("top_p_filter", "sorted_logits, order = torch.sort(logits, descending=True)"): _DEFAULT_DIM,
    ("top_k_filter", 'return logits.masked_fill(logits < kth_largest, float("-INF"))'): _INF,
    ("top_p_filter", 'return logits.masked_fill(remove, float("-INF"))'): _INF,
    ("sinusoidal_positional_encoding",
     "angles = torch.arange(n_positions, dtype=None)[:, None] * omega[None, :]"):
        "int64 positions are exact, and int64 times the float64 omega is computed in float64",
    ("sinusoidal_positional_encoding",
     "angles = torch.arange(n_positions, )[:, None] * omega[None, :]"):
        "int64 positions are exact, and int64 times the float64 omega is computed in float64",
    ("sinusoidal_positional_encoding", "pe = torch.empty(n_positions, d_model, dtype=None)"):
        "float64 sines written into float32 are rounded once, as .float() would round them",
    ("sinusoidal_positional_encoding", "pe = torch.empty(n_positions, d_model, )"):
        "float64 sines written into float32 are rounded once, as .float() would round them",
}
