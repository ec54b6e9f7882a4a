"""Task `trainer`: the pieces of a GPT training loop, one idea per module.

* :func:`get_batch` (``batching.py``): random windows of a token array, targets shifted by one;
* :func:`cross_entropy` (``loss.py``): the language-modelling loss, stable at huge logits;
* :func:`adamw_step` and :class:`AdamW` (``optim.py``): Adam with decoupled weight decay;
* :func:`cosine_lr` (``schedule.py``): linear warm-up, then cosine decay to a floor;
* :func:`clip_grad_norm` (``clip.py``): gradient clipping by the global L2 norm;
* :func:`train_step` (``step.py``): one optimizer step over k accumulated micro-batches.

Run ``pytest exercises -m trainer`` to check yours.
"""

from reference.trainer.step import StepStats  # given: what a step reports

from .batching import get_batch
from .clip import clip_grad_norm
from .loss import cross_entropy
from .optim import AdamW, adamw_step
from .schedule import cosine_lr
from .step import train_step

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
