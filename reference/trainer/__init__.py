"""The reference trainer: data pipeline, training loop, checkpoints, distributed, monitoring.

Modules: ``corpora`` (where text comes from), ``chars`` and ``data`` (tokens on disk, batches),
``config`` (YAML + overrides), ``optim`` and ``step`` (AdamW groups, the inner step), ``loop``
(the :class:`Trainer`), ``checkpoint`` (full training state), ``distributed`` (DDP),
``monitor`` (progress, metrics, TensorBoard, curves).

This package also exposes the public API of ``specs/test_trainer.py``: the production versions
(vectorised batches, torch's fused loss, AdamW and clipping, a step with mixed precision and
DDP), and the library's own copies of the one-tensor AdamW update and the schedule, whose clear
versions are also the best ones.
"""

from .data import get_batch
from .optim import AdamW, adamw_step, clip_grad_norm, cosine_lr
from .step import StepStats, cross_entropy, train_step

__all__ = [
    "AdamW",
    "StepStats",
    "adamw_step",
    "clip_grad_norm",
    "cosine_lr",
    "cross_entropy",
    "get_batch",
    "train_step",
]
