"""The inner training step as the reference runs it: accumulation, mixed precision, DDP.

The trainer spec's ``train_step`` (one optimizer step whose gradient is that of all micro-batches
as one batch), plus what a real run needs:

* ``autocast``: a context for the forward pass (bf16 on CPU and CUDA, fp16 on CUDA);
* ``scaler``: fp16's gradient scaler (scales the loss up so small gradients survive fp16, then
  unscales before clipping and skips the step when gradients overflowed);
* DDP: gradients are synchronised across processes only on the last micro-batch
  (``no_sync`` on the others), and the reported loss is the mean over all processes;
* FSDP2 (a model sharded by ``fully_shard``): the same, with the gradients' reduce-scatter
  skipped on the other micro-batches (``set_requires_gradient_sync(False)``), and clipping by
  the norm of the *whole* gradient (each rank holds a slice: the norm is summed over ranks);
* a non-finite loss raises :class:`NonFiniteLoss` *before* the optimizer step, so the weights in
  memory stay those of the last good step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .fsdp import clip_grad_norm, is_sharded

__all__ = ["NonFiniteLoss", "StepStats", "cross_entropy", "train_step"]


@dataclass(frozen=True)
class StepStats:
    """What one training step reports: the batch's mean loss and the pre-clip gradient norm."""

    loss: float
    grad_norm: float  # nan when the step does not clip (the norm is then not computed)


class NonFiniteLoss(FloatingPointError):
    """The loss was NaN or infinite; no optimizer step was taken."""

    def __init__(self, loss: float) -> None:
        super().__init__(f"the loss is {loss}")
        self.loss = loss


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -1) -> Tensor:
    """Mean cross-entropy of ``logits`` (..., V) against ``targets`` (...): torch's fused kernel.

    Positions whose target is ``ignore_index`` count neither in the sum nor in the mean (``nan``
    when all are ignored), as in the model's own loss.

    Example::

        >>> cross_entropy(torch.tensor([[0.0, 0.0], [9.0, 0.0]]), torch.tensor([1, -1]))
        tensor(0.6931)
    """
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index
    )


def _logits(output: Tensor | tuple[Tensor, ...]) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[tuple[Tensor, Tensor]],
    *,
    grad_clip: float | None = 1.0,
    autocast: Callable[[], AbstractContextManager[object]] = nullcontext,
    scaler: torch.amp.GradScaler | None = None,
) -> StepStats:
    """One optimizer step over ``micro_batches``; see the module docstring."""
    optimizer.zero_grad(set_to_none=True)
    k = len(micro_batches)
    scaling = scaler is not None and scaler.is_enabled()
    sharded = is_sharded(model)
    losses = []
    for i, (x, y) in enumerate(micro_batches):
        last = i == k - 1
        if sharded:  # accumulate unsharded; reduce-scatter on the last micro-batch only
            model.set_requires_gradient_sync(last)  # type: ignore[operator]
        sync = model.no_sync() if isinstance(model, DDP) and not last else nullcontext()
        with sync:
            with autocast():
                loss = cross_entropy(_logits(model(x)), y) / k
            scaled = scaler.scale(loss) if scaler is not None and scaling else loss
            scaled.backward()  # type: ignore[no-untyped-call]
        losses.append(loss.detach())
    total = torch.stack(losses).sum()
    if isinstance(model, DDP) or sharded:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)  # gloo has no AVG
        total /= dist.get_world_size()
    loss_value = float(total)  # one device sync per step
    if not torch.isfinite(total):
        raise NonFiniteLoss(loss_value)
    if scaler is not None and scaling:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    grad_norm = float("nan")
    if grad_clip is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        clip = clip_grad_norm if sharded else torch.nn.utils.clip_grad_norm_
        grad_norm = float(clip(params, grad_clip))
    if scaler is not None and scaling:
        scaler.step(optimizer)  # skipped when the gradients overflowed
        scaler.update()
    else:
        optimizer.step()
    return StepStats(loss=loss_value, grad_norm=grad_norm)
