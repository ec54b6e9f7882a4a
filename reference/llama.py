"""A Llama-style decoder in one file: RMSNorm, rotary positions, grouped-query attention, SwiGLU.

What differs from GPT-2 (``reference/model.py``), block by block:

* no position embeddings: queries and keys are rotated by their position (``reference.rope``);
* RMSNorm instead of LayerNorm, no biases anywhere;
* grouped-query attention: ``n_kv_head`` key/value heads, each serving ``n_head // n_kv_head``
  consecutive query heads (multi-query attention when ``n_kv_head == 1``), so the KV cache is
  ``n_head / n_kv_head`` times smaller;
* the SwiGLU feed-forward (``reference.swiglu``), or with ``n_experts > 0`` Mixtral's sparse
  mixture of experts (``reference.moe``), whose load-balancing loss joins the training loss;
* an untied LM head by default (``tie_word_embeddings=True`` ties it, as Llama 3.2 1B does);
* ``sliding_window`` W (Mistral's): each query sees itself and the W-1 tokens before it
  (Hugging Face's ``MistralForCausalLM`` convention), so a ring KV cache of W slots decodes
  exactly, past ``block_size`` too (``reference.kvcache``, ``overflow="slide"`` in
  ``reference.generate``).

Options from the training-speed records of the last two years (all off by default, so the
model stays Hugging Face's ``LlamaForCausalLM``):

* ``qk_norm``: RMSNorm over each head's query and key after the projection, before the
  rotation (``self_attn.q_norm`` / ``k_norm``, as Qwen3 and modded-nanogpt): attention logits
  cannot blow up, so a higher learning rate trains stably;
* ``mlp="relu2"``: the feed-forward ``down(relu(up(x))²)`` (two matrices, no gate; Primer's
  squared ReLU, modded-nanogpt's);
* ``zero_init_proj``: ``o_proj`` and ``down_proj`` start at zero, so every block starts as
  the identity and the residual stream is the embedding's;
* ``logit_softcap``: logits ``cap·tanh(logits / cap)`` (Gemma 2's final soft-capping, used by
  modded-nanogpt): they stay within (-cap, cap).

Parameter names are Hugging Face's ``LlamaForCausalLM`` / ``MixtralForCausalLM`` names
(``model.layers.0.self_attn.q_proj.weight``...), so ``reference.hf_llama`` converts key to key.
The interface is :class:`reference.model.GPT`'s: ``forward(idx, targets, cache=, input_pos=)``,
``new_cache``, ``num_parameters``, ``set_activation_checkpointing``, ``config``.

Example::

    >>> config = LlamaConfig(block_size=16, vocab_size=100, n_layer=2, n_head=4, n_kv_head=2,
    ...                      n_embd=32)
    >>> model = Llama(config)
    >>> logits, loss = model(torch.zeros(1, 5, dtype=torch.long))
    >>> tuple(logits.shape), loss
    ((1, 5, 100), None)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .kvcache import (
    SDPA_GQA,
    KVCache,
    cache_update,
    cached_attention,
    ring_attention,
    ring_attention_mask,
    ring_update,
)
from .model import check_idx, init_weights
from .moe import MoE, load_balancing_loss
from .rmsnorm import RMSNorm, rms_norm
from .rope import RopeLayout, RopeScaling, apply_rotary, rope_at, rope_cache, rope_frequencies
from .settings import Bool, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Settings
from .swiglu import SwiGLU, swiglu_hidden

__all__ = [
    "BLOCK_WEIGHTS", "Llama", "LlamaConfig", "apply_rotary", "causal_gqa", "check_block_weights",
    "check_gqa_inputs", "grouped_query_attention", "llama_attention", "llama_block",
    "repeat_kv", "rms_norm", "rope_cache", "rope_frequencies", "sliding_window_mask", "swiglu",
]

INIT_STD = 0.02  # Hugging Face Llama's initializer_range


class LlamaConfig(Settings):
    """The Llama-style model's shape. Validated on construction (frozen pydantic model): a bad
    value raises ``ValueError`` naming the field.

    ``n_kv_head`` defaults to ``n_head`` (plain multi-head attention) and must divide it;
    ``intermediate_size`` defaults to :func:`reference.swiglu.swiglu_hidden` of ``n_embd``.
    ``norm_eps`` 1e-5 is Llama 2's and Mixtral's RMSNorm epsilon. ``n_experts`` 0 is the dense
    model; otherwise each block's feed-forward is a mixture of ``n_experts`` SwiGLU experts of
    ``intermediate_size``, ``n_experts_per_tok`` per token, and the loss adds
    ``router_aux_loss_coef`` times the load-balancing loss (0.001: Hugging Face Mixtral's
    default). ``dropout`` (training only) applies to the attention weights and both residual
    branches. ``qk_norm``, ``mlp``, ``zero_init_proj`` and ``logit_softcap``: see the module's
    docstring (``mlp="relu2"`` uses ``intermediate_size`` as its hidden width; it does not
    apply to experts). ``sliding_window`` W: each query sees itself and the W-1 tokens before
    it (None: every token before it), as Hugging Face's Mistral and Mixtral.
    """

    arch: Literal["llama"] = "llama"
    block_size: PositiveInt = 2048
    vocab_size: PositiveInt = 32000
    n_layer: PositiveInt = 12
    n_head: PositiveInt = 12
    n_kv_head: PositiveInt = 12
    n_embd: PositiveInt = 768
    intermediate_size: PositiveInt = 2048
    rope_theta: PositiveFloat = 10000.0
    rope_layout: RopeLayout = "half"
    rope_scaling: RopeScaling | None = None
    norm_eps: PositiveFloat = 1e-5
    tie_word_embeddings: Bool = False
    dropout: Annotated[NonNegativeFloat, Field(lt=1.0)] = 0.0
    n_experts: NonNegativeInt = 0
    n_experts_per_tok: PositiveInt = 2
    router_aux_loss_coef: NonNegativeFloat = 0.001
    attention_bias: Bool = False
    qk_norm: Bool = False
    mlp: Literal["swiglu", "relu2"] = "swiglu"
    zero_init_proj: Bool = False
    logit_softcap: PositiveFloat | None = None
    sliding_window: PositiveInt | None = None

    @model_validator(mode="before")
    @classmethod
    def _derived_defaults(cls, data: Any) -> Any:
        """n_kv_head = n_head and intermediate_size = swiglu_hidden(n_embd) unless given."""
        if isinstance(data, dict):
            data = dict(data)
            n_head, n_embd = data.get("n_head", 12), data.get("n_embd", 768)
            if "n_kv_head" not in data and isinstance(n_head, int):
                data["n_kv_head"] = n_head
            if "intermediate_size" not in data and isinstance(n_embd, int) and n_embd > 0:
                data["intermediate_size"] = swiglu_hidden(n_embd)
        return data

    @model_validator(mode="after")
    def _shapes_fit(self) -> LlamaConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}: "
                             "each head gets n_embd // n_head dimensions")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(f"head size n_embd // n_head = {self.n_embd // self.n_head} must be "
                             "even: rotary embeddings turn pairs of channels")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head {self.n_kv_head} must divide n_head {self.n_head}: each "
                             "key/value head serves n_head // n_kv_head query heads")
        if self.n_experts and self.n_experts_per_tok > self.n_experts:
            raise ValueError(f"n_experts_per_tok {self.n_experts_per_tok} exceeds n_experts "
                             f"{self.n_experts}")
        if self.n_experts and self.mlp != "swiglu":
            raise ValueError(f"mlp={self.mlp!r} with n_experts={self.n_experts}: the experts "
                             "are SwiGLU; use mlp='swiglu' or n_experts=0")
        return self

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def hf_unsupported(self) -> list[str]:
        """The options Hugging Face's Llama / Mixtral / Qwen3 cannot express (empty: it can):
        ``mlp="relu2"``, ``logit_softcap``, ``qk_norm`` with experts or the interleaved
        layout (``qk_norm`` alone exports as Qwen3), and ``sliding_window`` (Mistral's, or
        Mixtral's with experts) with ``qk_norm`` or attention biases. ``zero_init_proj`` is only an
        initialisation and exports as any weights do."""
        bad = [f"mlp={self.mlp!r}"] if self.mlp != "swiglu" else []
        if self.logit_softcap is not None:
            bad.append(f"logit_softcap={self.logit_softcap}")
        if self.qk_norm and (self.n_experts or self.rope_layout != "half"):
            bad.append(f"qk_norm with n_experts={self.n_experts}, "
                       f"rope_layout={self.rope_layout!r}")
        if self.sliding_window is not None and (self.qk_norm or self.attention_bias):
            bad.append(f"sliding_window={self.sliding_window} with qk_norm or attention_bias")
        return bad

    def check_hf_expressible(self) -> None:
        """Raise ValueError, one line naming them, if :meth:`hf_unsupported` finds options."""
        if bad := self.hf_unsupported():
            raise ValueError(f"Hugging Face's Llama layout cannot express {', '.join(bad)}: "
                             "export a model without these options")


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, n_kv, T, hs) -> (B, n_kv * n_rep, T, hs): kv head j serves query heads
    ``j*n_rep .. (j+1)*n_rep - 1`` (Hugging Face's order, ``repeat_interleave`` on dim 1).

    >>> repeat_kv(torch.tensor([10.0, 20.0]).view(1, 2, 1, 1), 2).flatten().tolist()
    [10.0, 10.0, 20.0, 20.0]
    """
    if n_rep == 1:
        return x
    B, n_kv, T, hs = x.shape
    return x[:, :, None].expand(B, n_kv, n_rep, T, hs).reshape(B, n_kv * n_rep, T, hs)


def sliding_window_mask(T: int, window: int, device: torch.device | None = None) -> Tensor:
    """(T, T) bool: query i sees key j when ``i - window < j <= i`` (itself and the
    ``window - 1`` keys before it: Hugging Face's Mistral mask).

    >>> sliding_window_mask(4, 2).int()
    tensor([[1, 0, 0, 0],
            [1, 1, 0, 0],
            [0, 1, 1, 0],
            [0, 0, 1, 1]], dtype=torch.int32)
    """
    i = torch.arange(T, device=device)
    offset = i[:, None] - i[None, :]  # (T, T) query minus key position
    return (offset >= 0) & (offset < window)


def causal_gqa(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0,
               window: int | None = None) -> Tensor:
    """Causal attention, q (B, nh, T, hs) over k, v (B, n_kv, T, hs), on torch's fused kernels:
    the kv heads are shared in place (``enable_gqa``), copied by :func:`repeat_kv` before
    torch 2.5. A sliding ``window`` shorter than T masks the keys further back
    (:func:`sliding_window_mask`)."""
    mask = None  # (T, T) when the window is shorter than the block
    if window is not None and window < q.shape[2]:
        mask = sliding_window_mask(q.shape[2], window, q.device)
    causal = mask is None
    if k.shape[1] == q.shape[1] or not SDPA_GQA:
        n_rep = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep),
                                              attn_mask=mask, dropout_p=dropout_p,
                                              is_causal=causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                          is_causal=causal, enable_gqa=True)


class Attention(nn.Module):
    """Causal grouped-query self-attention with rotary positions (``self_attn.*_proj``)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        hs, bias = config.head_size, config.attention_bias
        self.q_proj = nn.Linear(config.n_embd, config.n_head * hs, bias=bias)
        self.k_proj = nn.Linear(config.n_embd, config.n_kv_head * hs, bias=bias)
        self.v_proj = nn.Linear(config.n_embd, config.n_kv_head * hs, bias=bias)
        self.o_proj = nn.Linear(config.n_head * hs, config.n_embd, bias=bias)
        self.q_norm: RMSNorm | None = None
        self.k_norm: RMSNorm | None = None
        if config.qk_norm:  # over each head's hs channels, as Qwen3's q_norm / k_norm
            self.q_norm = RMSNorm(hs, config.norm_eps)
            self.k_norm = RMSNorm(hs, config.norm_eps)
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.n_kv_head, hs
        self.layout: RopeLayout = config.rope_layout
        self.dropout = config.dropout
        self.window = config.sliding_window

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor,
                kv_cache: tuple[Tensor, Tensor] | None = None,
                input_pos: Tensor | None = None, ring_mask: Tensor | None = None) -> Tensor:
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_size)  # (B, T, nh, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_size)  # n_kv heads
        if self.q_norm is not None and self.k_norm is not None:  # before the rotation
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, nh, T, hs), (B, n_kv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_size).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin, self.layout), apply_rotary(k, cos, sin, self.layout)
        if kv_cache is not None and input_pos is not None and ring_mask is not None:
            # a ring cache: attend to its keys and the block's own, then write the block
            y = ring_attention(q, k, v, *kv_cache, ring_mask)  # (B, nh, T, hs)
            ring_update(*kv_cache, k, v, input_pos)
        elif kv_cache is not None and input_pos is not None:
            # the cache holds n_kv_head heads; each serves n_head // n_kv_head query heads
            cache_update(*kv_cache, k, v, input_pos)
            y = cached_attention(q, *kv_cache, input_pos, self.window)  # (B, nh, T, hs)
        else:
            dropout = self.dropout if self.training else 0.0
            y = causal_gqa(q, k, v, dropout, self.window)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side
        out: Tensor = self.o_proj(y)
        return out


class ReLU2(nn.Module):
    """``down_proj(relu(up_proj(x))²)`` without biases: the squared-ReLU feed-forward."""

    def __init__(self, n_embd: int, hidden: int) -> None:
        super().__init__()
        self.up_proj = nn.Linear(n_embd, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, n_embd, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.down_proj(F.relu(self.up_proj(x)).square())  # (..., C)
        return out


class Block(nn.Module):
    """A pre-norm Llama block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.

    The feed-forward is SwiGLU, or a mixture of experts (``n_experts > 0``) whose router logits
    the block keeps in ``router_logits`` for the model's auxiliary loss.
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp: nn.Module
        if config.n_experts:
            self.mlp = MoE(config.n_embd, config.intermediate_size, config.n_experts,
                           config.n_experts_per_tok)
        elif config.mlp == "relu2":
            self.mlp = ReLU2(config.n_embd, config.intermediate_size)
        else:
            self.mlp = SwiGLU(config.n_embd, config.intermediate_size)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.activation_checkpointing = False
        self.router_logits: Tensor | None = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor,
                kv_cache: tuple[Tensor, Tensor] | None = None,
                input_pos: Tensor | None = None, ring_mask: Tensor | None = None) -> Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            out: Tensor = checkpoint(self._forward, x, cos, sin, kv_cache, input_pos, ring_mask,
                                     use_reentrant=False)
            return out
        return self._forward(x, cos, sin, kv_cache, input_pos, ring_mask)

    def _forward(self, x: Tensor, cos: Tensor, sin: Tensor,
                 kv_cache: tuple[Tensor, Tensor] | None, input_pos: Tensor | None,
                 ring_mask: Tensor | None = None) -> Tensor:
        drop = self.resid_dropout
        h = self.input_layernorm(x)
        x = x + drop(self.self_attn(h, cos, sin, kv_cache, input_pos, ring_mask))
        h = self.mlp(self.post_attention_layernorm(x))
        if isinstance(h, tuple):  # a mixture of experts: (output, router logits (B*T, E))
            h, self.router_logits = h
        out: Tensor = x + drop(h)
        return out


class Trunk(nn.Module):
    """Embeddings, blocks, final norm (Hugging Face's ``model.*`` names)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.layers = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm = RMSNorm(config.n_embd, config.norm_eps)
        self.drop = nn.Dropout(config.dropout)


class Llama(nn.Module):
    """A Llama-style (or, with experts, Mixtral-style) decoder with GPT's interface.

    ``last_expert_counts``: after a forward pass of a mixture-of-experts model, the tokens
    routed to each expert, (n_layer, n_experts) int64, for logging utilisation (None if dense).
    """

    rope_cos: Tensor  # (block_size, hs/2) float32 buffers, see _set_rope_tables
    rope_sin: Tensor
    rope_inv_freq: Tensor  # (hs/2,) float32: the angles of positions past the tables

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Trunk(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.model.embed_tokens.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the projections that write into the residual stream
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                if config.zero_init_proj:  # each block starts as the identity
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * config.n_layer))
        self._set_rope_tables(self.lm_head.weight.device)  # meta under torch.device("meta")

    def _set_rope_tables(self, device: torch.device) -> None:
        """The (block_size, hs/2) cos and sin tables: buffers (they follow the model's device),
        not in the state dict, and always float32 (see :meth:`_apply`)."""
        c = self.config
        with torch.device(device):  # computed where they live (meta: shapes only)
            cos, sin = rope_cache(c.head_size, c.block_size, c.rope_theta, c.rope_scaling)
            inv_freq = rope_frequencies(c.head_size, c.rope_theta, c.rope_scaling)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("rope_inv_freq", inv_freq, persistent=False)

    def _apply(self, fn: Any, recurse: bool = True) -> Llama:
        # model.to(torch.bfloat16) would round the angles' cos and sin (to 3 digits: useless
        # at long positions), and to_empty() would leave them uninitialised: recompute them in
        # float32 on the new device instead.
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        self._set_rope_tables(self.rope_cos.device)
        return self

    _init_weights = staticmethod(init_weights)

    def blocks(self) -> list[Block]:
        return [cast(Block, block) for block in self.model.layers]

    @property
    def last_expert_counts(self) -> Tensor | None:
        if not self.config.n_experts:
            return None
        return torch.stack([cast(MoE, block.mlp).last_counts for block in self.blocks()])

    def extend_context(self, block_size: int,
                       rope_scaling: RopeScaling | Literal["keep"] | None = "keep",
                       sliding_window: int | Literal["keep"] | None = "keep") -> Llama:
        """Serve contexts of up to ``block_size`` tokens (and change the rotary scaling and the
        sliding window, unless ``"keep"``), in place: rotary positions have no learned table,
        so only the cos/sin tables grow. Past the trained length, plain RoPE *extrapolates*
        (angles never seen in training); ``RopeScaling`` "linear" or "yarn" interpolates them
        instead; a ``sliding_window`` no longer than the trained length shows every query only
        the distances it was trained on. Returns self.

        >>> model = Llama(LlamaConfig(block_size=8, vocab_size=10, n_layer=1, n_head=2,
        ...                           n_embd=8)).extend_context(32)
        >>> model.config.block_size, tuple(model.rope_cos.shape)
        (32, (32, 2))
        """
        update: dict[str, Any] = {"block_size": block_size}
        if rope_scaling != "keep":
            update["rope_scaling"] = rope_scaling
        if sliding_window != "keep":
            update["sliding_window"] = sliding_window
        self.config = LlamaConfig.model_validate(self.config.model_dump() | update)
        for block in self.blocks():
            block.self_attn.window = self.config.sliding_window
        self._set_rope_tables(self.rope_cos.device)
        return self

    def set_activation_checkpointing(self, enabled: bool = True) -> Llama:
        """Recompute each block's activations in the backward pass instead of storing them;
        parameter names are unchanged. Returns self."""
        for block in self.blocks():
            block.activation_checkpointing = enabled
        return self

    def new_cache(self, batch_size: int, max_len: int | None = None,
                  dtype: torch.dtype | None = None, ring: bool = False) -> KVCache:
        """An empty KV cache of ``n_kv_head`` heads for ``batch_size`` rows of up to ``max_len``
        (default ``block_size``) tokens, on the model's device, in its dtype (or ``dtype``).

        ``ring=True``: a ring of ``max_len`` slots (default ``sliding_window``, else
        ``block_size``) that takes any number of tokens, each query seeing the last
        ``min(sliding_window, max_len)`` positions (``reference.kvcache``): exact for a
        sliding-window model when ``max_len >= sliding_window``; for full attention, an
        approximation past ``max_len`` (the oldest keys are forgotten)."""
        cfg, weight = self.config, self.model.embed_tokens.weight
        default = (cfg.sliding_window or cfg.block_size) if ring else cfg.block_size
        return KVCache.empty(n_layer=cfg.n_layer, batch_size=batch_size, n_head=cfg.n_kv_head,
                             max_len=max_len or default, head_size=cfg.head_size,
                             dtype=dtype or weight.dtype, device=weight.device, ring=ring)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters counted once each (a tied head is the token embedding).

        ``non_embedding=True`` leaves out the token embedding when the head is untied (a lookup
        table, no compute); a tied one stays, as the head uses it (GPT's convention).
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and not self.config.tie_word_embeddings:
            n -= self.model.embed_tokens.weight.numel()
        return n

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, *, cache: KVCache | None = None,
        input_pos: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, vocab_size) for token ids ``idx`` (B, T), and the loss given targets.

        As :meth:`reference.model.GPT.forward`: ``targets`` (B, T) are the next tokens, ``-1``
        ignored, the loss their mean cross-entropy (plus ``router_aux_loss_coef`` times the
        load-balancing loss with experts). With a ``cache``, ``input_pos`` (B, T) gives each
        token's slot, which is also its rotary position; with a ring cache (``new_cache(...,
        ring=True)``), each token's position, of any size, and T is not bounded by
        ``block_size``.
        """
        cfg = self.config
        ring = cache is not None and cache.ring
        check_idx(idx, max(idx.shape[-1], 1) if ring and isinstance(idx, Tensor)
                  else cfg.block_size)  # a ring takes blocks of any length
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(
                f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}"
            )
        if (cache is None) != (input_pos is None):
            raise ValueError("cache and input_pos go together: give both or neither")
        if input_pos is not None and input_pos.shape != idx.shape:
            raise ValueError(f"input_pos must have the shape of idx {tuple(idx.shape)}, got "
                             f"{tuple(input_pos.shape)}")
        T = idx.shape[1]
        ring_mask = None
        if input_pos is None:
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, hs/2)
        elif cache is not None and cache.pos is not None:  # a ring: positions past any table
            cos, sin = rope_at(input_pos, cfg.head_size, cfg.rope_theta, cfg.rope_scaling,
                               inv_freq=self.rope_inv_freq)
            window = min(cfg.sliding_window or cache.max_len, cache.max_len)
            ring_mask = ring_attention_mask(cache.pos, input_pos, window)  # (B, 1, T, S + T)
        else:
            cos, sin = self.rope_cos[input_pos], self.rope_sin[input_pos]  # (B, T, hs/2)
        x = self.model.drop(self.model.embed_tokens(idx))  # (B, T, C)
        for i, block in enumerate(self.model.layers):
            kv = cache.layer(i) if cache is not None else None
            x = block(x, cos, sin, kv, input_pos, ring_mask)
        if cache is not None and cache.pos is not None and input_pos is not None:
            cache.advance(input_pos)
        logits: Tensor = self.lm_head(self.model.norm(x))  # (B, T, vocab_size)
        if cfg.logit_softcap is not None:  # Gemma 2's: within (-cap, cap), ~identity near 0
            logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1).long(), ignore_index=-1
        )
        if cfg.n_experts and cfg.router_aux_loss_coef:
            router_logits = [cast(Tensor, block.router_logits) for block in self.blocks()]
            aux = load_balancing_loss(router_logits, cfg.n_experts, cfg.n_experts_per_tok)
            loss = loss + cfg.router_aux_loss_coef * aux.to(loss.dtype)
        return logits, loss

    @classmethod
    def from_hf(cls, hf_model: nn.Module) -> Llama:
        """A model with the weights of a Hugging Face ``LlamaForCausalLM`` or
        ``MixtralForCausalLM`` (see :mod:`reference.hf_llama`)."""
        from .hf_llama import from_hf_model

        return from_hf_model(hf_model)

    def to_hf(self) -> nn.Module:
        """A Hugging Face ``LlamaForCausalLM`` (``MixtralForCausalLM`` with experts,
        ``Qwen3ForCausalLM`` with ``qk_norm``) holding these weights; needs ``transformers``
        (see :mod:`reference.hf_llama`). A ValueError names the options none of them has."""
        self.config.check_hf_expressible()
        if self.config.qk_norm:
            return self._to_qwen3()
        from .hf_llama import to_hf_model

        return to_hf_model(self)

    def _to_qwen3(self) -> nn.Module:
        """Qwen3 is Llama with q_norm / k_norm under the same names: the same state dict."""
        import transformers

        from .hf_llama import llama_config_to_hf

        kwargs = {k: v for k, v in llama_config_to_hf(self.config).items() if k != "mlp_bias"}
        hf_config: Any = transformers.Qwen3Config(**kwargs, use_sliding_window=False)
        hf_config._attn_implementation = "sdpa"
        hf: nn.Module = transformers.Qwen3ForCausalLM(hf_config)
        hf.load_state_dict({k: v.detach().float().cpu() for k, v in self.state_dict().items()},
                           strict=True)
        return hf.train(self.training)


# ---------------------------------------------------------------- the spec's functional API
# (specs/test_llama.py runs the course's functions and these on the same tensors; weights in
# nn.Linear's (out, in) layout, a block's as a dict of Hugging Face's names)

BLOCK_WEIGHTS = (
    "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
    "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
)


def check_gqa_inputs(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Raise ValueError naming the shapes unless q (B, nh, T, hs), k and v (B, n_kv, T, hs)
    with n_kv dividing nh."""
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4 or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"expected q (B, nh, T, hs), k and v (B, n_kv, T, hs); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"{k.shape[1]} key/value heads must divide the {q.shape[1]} query heads")


def check_block_weights(weights: Mapping[str, Tensor]) -> None:
    """Raise KeyError naming the missing weights of a block."""
    if missing := [k for k in BLOCK_WEIGHTS if k not in weights]:
        raise KeyError(f"llama_block's weights lack {missing}")


def swiglu(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    """``down(silu(gate(x)) * up(x))``: x (..., C), w_gate and w_up (H, C), w_down (C, H)."""
    return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


def grouped_query_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention of q (B, nh, T, hs) over k, v (B, n_kv, T, hs) -> (B, nh, T, hs);
    kv head j serves query heads ``j*nh/n_kv .. (j+1)*nh/n_kv - 1``."""
    check_gqa_inputs(q, k, v)
    return causal_gqa(q, k, v)


def llama_attention(x: Tensor, cos: Tensor, sin: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor,
                    w_o: Tensor, n_head: int, n_kv_head: int) -> Tensor:
    """Llama's attention sub-block: x (B, T, C), the angles' ``cos``/``sin`` (T, hs/2) ->
    (B, T, C). q and k are rotated (half-split layout), v is not."""
    B, T, _ = x.shape
    hs = w_q.shape[0] // n_head
    q = F.linear(x, w_q).view(B, T, n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
    k = F.linear(x, w_k).view(B, T, n_kv_head, hs).transpose(1, 2)  # (B, n_kv, T, hs)
    v = F.linear(x, w_v).view(B, T, n_kv_head, hs).transpose(1, 2)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    y = grouped_query_attention(q, k, v).transpose(1, 2).reshape(B, T, n_head * hs)
    return F.linear(y, w_o)


def llama_block(x: Tensor, weights: Mapping[str, Tensor], cos: Tensor, sin: Tensor,
                n_head: int, n_kv_head: int, eps: float) -> Tensor:
    """A pre-norm block: ``x + attn(rms_norm(x))``, then ``x + swiglu(rms_norm(x))``; the
    weights by Hugging Face's names (:data:`BLOCK_WEIGHTS`)."""
    check_block_weights(weights)
    w = weights
    h = rms_norm(x, w["input_layernorm.weight"], eps)
    x = x + llama_attention(h, cos, sin, w["self_attn.q_proj.weight"], w["self_attn.k_proj.weight"],
                            w["self_attn.v_proj.weight"], w["self_attn.o_proj.weight"], n_head,
                            n_kv_head)
    h = rms_norm(x, w["post_attention_layernorm.weight"], eps)
    return x + swiglu(h, w["mlp.gate_proj.weight"], w["mlp.up_proj.weight"],
                      w["mlp.down_proj.weight"])
