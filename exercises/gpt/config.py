"""The model's shape, one frozen dataclass passed to every function (as nanoGPT's GPTConfig)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPTConfig:
    """GPT-2's hyper-parameters; the defaults are GPT-2 small (124,439,808 parameters).

    ``bias=False`` drops every Linear and LayerNorm bias (the ``*.bias`` parameters are then
    absent). ``dropout`` is for training; the functional forward pass here never drops.

    Example::

        >>> GPTConfig(block_size=16, vocab_size=100, n_layer=2, n_head=2, n_embd=32).n_embd
        32
    """

    block_size: int = 1024  # longest sequence: the number of learned positions
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")
