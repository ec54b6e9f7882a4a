"""A GPT-2-style language model in one file, nanoGPT style.

Classes appear in the order they depend on each other: LayerNorm, attention, MLP, block, config,
model. Parameter names are GPT-2's (``transformer.h.0.attn.c_attn.weight``...), so loading a
Hugging Face checkpoint is a key-to-key map (see ``reference/hf.py``); the only difference is that
GPT-2's ``Conv1D`` stores weights as (in, out) and ``nn.Linear`` as (out, in).

Example::

    >>> config = GPTConfig(block_size=16, vocab_size=100, n_layer=2, n_head=2, n_embd=32)
    >>> model = GPT(config)
    >>> logits, loss = model(torch.zeros(1, 5, dtype=torch.long))
    >>> tuple(logits.shape), loss
    ((1, 5, 100), None)
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .kvcache import KVCache, cache_update, cached_attention
from .settings import Bool, NonNegativeFloat, PositiveInt, Settings

LAYER_NORM_EPS = 1e-5  # GPT-2's layer_norm_epsilon
INIT_STD = 0.02  # GPT-2's initializer_range


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (``nn.LayerNorm`` cannot drop only the bias)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, LAYER_NORM_EPS)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a causal mask; one fused projection for q, k and v."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(self, x: Tensor, kv_cache: tuple[Tensor, Tensor] | None = None,
                input_pos: Tensor | None = None) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, nh, T, hs): heads become a batch dimension
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if kv_cache is not None and input_pos is not None:
            # write this block's keys and values at their slots, attend over the whole cache
            # (bottom-right aligned: the query at slot p sees slots <= p; see kvcache.py)
            cache_update(*kv_cache, k, v, input_pos)
            y = cached_attention(q, *kv_cache, input_pos)  # (B, nh, T, hs)
        else:
            # is_causal lets torch pick the flash / memory-efficient kernels on GPU; no mask
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        out: Tensor = self.resid_dropout(self.c_proj(y))
        return out


class MLP(nn.Module):
    """Position-wise feed-forward: expand 4x, GELU (GPT-2's tanh approximation), project back."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))
        return out


class Block(nn.Module):
    """A pre-LayerNorm transformer block: the residual stream is only ever added to.

    ``activation_checkpointing = True`` trades compute for memory in training: the block's
    activations are not kept for the backward pass but recomputed there (about one extra
    forward pass per step; one block's activations in memory instead of one per layer).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)
        self.activation_checkpointing = False

    def forward(self, x: Tensor, kv_cache: tuple[Tensor, Tensor] | None = None,
                input_pos: Tensor | None = None) -> Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            out: Tensor = checkpoint(self._forward, x, kv_cache, input_pos, use_reentrant=False)
            return out
        return self._forward(x, kv_cache, input_pos)

    def _forward(self, x: Tensor, kv_cache: tuple[Tensor, Tensor] | None = None,
                 input_pos: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache, input_pos)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPTConfig(Settings):
    """The model's shape. The defaults are GPT-2 small (124M parameters).

    ``bias=False`` drops the biases of every Linear and LayerNorm (a little faster, as good);
    GPT-2 checkpoints have them. ``dropout`` applies in training mode only. Validated on
    construction (a pydantic model, frozen): a bad value raises ``ValueError`` naming the field.
    """

    arch: Literal["gpt2"] = "gpt2"  # which model (reference.arch); a dict without it is GPT-2
    block_size: PositiveInt = 1024  # longest sequence the model sees (learned positions)
    vocab_size: PositiveInt = 50257  # GPT-2's: 50,000 merges + 256 bytes + <|endoftext|>
    n_layer: PositiveInt = 12
    n_head: PositiveInt = 12
    n_embd: PositiveInt = 768
    dropout: Annotated[NonNegativeFloat, Field(lt=1.0)] = 0.0
    bias: Bool = True

    @model_validator(mode="after")
    def _heads_split_the_width(self) -> GPTConfig:
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}: "
                "each head gets n_embd // n_head dimensions"
            )
        return self


# GPT-2's four published sizes (Radford et al. 2019); all share block_size 1024 and vocab 50257.
PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}


def check_idx(idx: Tensor, block_size: int) -> None:
    """Raise TypeError/ValueError, naming the bad value, unless ``idx`` is a (B, T) batch of
    integer ids with 1 <= T <= ``block_size``.

    Only the tensor's metadata is read: no host-device synchronisation, so the forward pass
    calls it on every step. Whether the ids lie in the vocabulary is checked where they enter
    (:func:`check_token_ids`: the command line, generation, data loading).
    """
    if not isinstance(idx, Tensor):
        raise TypeError(f"idx must be a torch.Tensor of token ids, got {type(idx).__name__}")
    if idx.dtype not in (torch.int64, torch.int32):
        raise TypeError(
            f"idx must hold integer token ids (torch.int64 or torch.int32), got {idx.dtype}"
        )
    if idx.ndim != 2:
        raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
    if idx.numel() == 0:
        raise ValueError(f"empty input: idx has shape {tuple(idx.shape)}; need B >= 1 and T >= 1")
    if idx.shape[1] > block_size:
        raise ValueError(f"sequence length {idx.shape[1]} exceeds block_size {block_size}")


def check_token_ids(idx: Tensor, vocab_size: int) -> None:
    """Raise ValueError naming the first id of ``idx`` outside ``[0, vocab_size)``.

    Reads the ids' range (one host-device synchronisation): call it once where ids enter, not
    on every step.
    """
    if idx.numel() == 0:
        return
    lo, hi = torch.aminmax(idx)
    bad = int(lo) if int(lo) < 0 else int(hi) if int(hi) >= vocab_size else None
    if bad is not None:
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")


def init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation (``module.apply(init_weights)``): linear and embedding weights
    normal with std ``INIT_STD``, biases zero; the Llama-style model uses it too."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)


class Transformer(nn.Module):
    """The trunk: embeddings, blocks, final LayerNorm (GPT-2's ``transformer.*`` names)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # learned positions
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, bias=config.bias)


class GPT(nn.Module):
    """GPT-2: token + position embeddings, ``n_layer`` pre-LN blocks, LayerNorm, tied LM head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): reading a token and writing it share one matrix.
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer), since every block adds
        # two of them to the residual stream and its variance would otherwise grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * config.n_layer))

    _init_weights = staticmethod(init_weights)

    def blocks(self) -> list[Block]:
        """The transformer blocks in order (``transformer.h``), as :class:`reference.llama.Llama`
        lists its own: what sharding and per-block compilation walk over."""
        return [cast(Block, block) for block in self.transformer.h]

    def set_activation_checkpointing(self, enabled: bool = True) -> GPT:
        """Recompute each block's activations in the backward pass instead of storing them
        (see :class:`Block`); parameter names and checkpoints are unchanged. Returns self."""
        for block in self.transformer.h:
            block.activation_checkpointing = enabled  # type: ignore[assignment]
        return self

    def new_cache(self, batch_size: int, max_len: int | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for ``batch_size`` rows of up to ``max_len`` (default
        ``block_size``) tokens, on the model's device, in its dtype (or ``dtype``)."""
        cfg, weight = self.config, self.transformer.wpe.weight
        return KVCache.empty(n_layer=cfg.n_layer, batch_size=batch_size, n_head=cfg.n_head,
                             max_len=max_len or cfg.block_size, head_size=cfg.n_embd // cfg.n_head,
                             dtype=dtype or weight.dtype, device=weight.device)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters counted once each (the tied head is the token embedding).

        ``non_embedding=True`` leaves out the position embeddings (the token embedding still
        counts, as the head uses it), the convention of the scaling-law papers and nanoGPT.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied one once
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, *, cache: KVCache | None = None,
        input_pos: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, vocab_size) for token ids ``idx`` (B, T), and the loss given targets.

        ``targets`` (B, T) are the next tokens (``idx`` shifted left by one, done by the data
        loader); ``-1`` marks a position to ignore. The loss is the mean cross-entropy.

        With a ``cache`` (``reference.kvcache.KVCache``), ``input_pos`` (B, T) gives each
        token's slot in it, which is also its position: the block's keys and values are written
        there and each token attends to the cached ones at slots up to its own. The caller keeps
        the slots below ``block_size`` (it is not checked here: that would read the values).
        """
        cfg = self.config
        check_idx(idx, cfg.block_size)  # shapes only: ids are checked where they enter
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
        pos = torch.arange(T, device=idx.device) if input_pos is None else input_pos  # or (B, T)
        tr = self.transformer
        x = tr.drop(tr.wte(idx) + tr.wpe(pos))  # (B, T, C): positions broadcast over the batch
        for i, block in enumerate(tr.h):
            kv = cache.layer(i) if cache is not None else None
            x = block(x, kv, input_pos)
        x = tr.ln_f(x)
        logits: Tensor = self.lm_head(x)  # (B, T, vocab_size)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1).long(), ignore_index=-1
        )
        return logits, loss
