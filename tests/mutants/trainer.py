"""Classic learner bugs in the trainer exercises; ``specs/test_trainer.py`` must catch each one."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from solutions.trainer import AdamW
from solutions.trainer import clip as clip_module
from solutions.trainer import loss as loss_module
from solutions.trainer import optim as optim_module
from solutions.trainer.step import StepStats, _logits

# ----------------------------------------------------------------------------- get_batch


def _windows(data: Any, starts: Tensor, offset: int, block_size: int) -> Tensor:
    rows = [np.asarray(data[int(i) + offset : int(i) + offset + block_size]) for i in starts]
    return torch.from_numpy(np.stack(rows).astype(np.int64))


def _batch_with(high: int, shift: int) -> Any:
    def get_batch(data: Any, block_size: int, batch_size: int, *, generator: Any = None,
                  device: Any = "cpu") -> tuple[Tensor, Tensor]:
        starts = torch.randint(len(data) - block_size + high, (batch_size,), generator=generator)
        x = _windows(data, starts, 0, block_size)
        y = _windows(data, starts, shift, block_size)
        return x.to(device), y.to(device)

    return get_batch


def _batch_on_the_cpu(data: Any, block_size: int, batch_size: int, *, generator: Any = None,
                      device: Any = "cpu") -> tuple[Tensor, Tensor]:
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    return _windows(data, starts, 0, block_size), _windows(data, starts, 1, block_size)


def _batch_global_rng(data: Any, block_size: int, batch_size: int, *, generator: Any = None,
                      device: Any = "cpu") -> tuple[Tensor, Tensor]:
    starts = torch.randint(len(data) - block_size, (batch_size,))  # ignores the generator
    return _windows(data, starts, 0, block_size), _windows(data, starts, 1, block_size)


def _batch_keeps_dtype(data: Any, block_size: int, batch_size: int, *, generator: Any = None,
                       device: Any = "cpu") -> tuple[Tensor, Tensor]:
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([torch.from_numpy(np.array(data[int(i) : int(i) + block_size]))
                     for i in starts])
    y = torch.stack([torch.from_numpy(np.array(data[int(i) + 1 : int(i) + 1 + block_size]))
                     for i in starts])
    return x, y


# ----------------------------------------------------------------------------- cross-entropy


def _mean_kept(nll: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
    keep = targets.reshape(-1) != ignore_index
    return torch.where(keep, nll.reshape(-1), 0.0).sum() / keep.sum()


def _ce_rows(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(N, V) logits and (N, 1) targets, any ignored id replaced by 0 for gather."""
    z = logits.reshape(-1, logits.shape[-1])
    t = targets.reshape(-1, 1)
    return z, torch.where((t >= 0) & (t < z.shape[-1]), t, 0)


def _ce_naive(logits: Tensor, targets: Tensor, ignore_index: int = -1) -> Tensor:
    z, t = _ce_rows(logits, targets)
    probs = z.exp() / z.exp().sum(-1, keepdim=True)  # overflows at large logits
    return _mean_kept(-probs.gather(-1, t).log(), targets, ignore_index)


def _ce_global_max(logits: Tensor, targets: Tensor, ignore_index: int = -1) -> Tensor:
    z, t = _ce_rows(logits, targets)
    shifted = z - z.max().detach()  # one shift for all rows: a row far below it underflows
    nll = shifted.exp().sum(-1, keepdim=True).log() - shifted.gather(-1, t)
    return _mean_kept(nll, targets, ignore_index)


def _ce_log_of_softmax(logits: Tensor, targets: Tensor, ignore_index: int = -1) -> Tensor:
    z, t = _ce_rows(logits, targets)
    shifted = z - z.max(-1, keepdim=True).values.detach()
    probs = shifted.exp() / shifted.exp().sum(-1, keepdim=True)  # stable, but log(0) = -inf
    return _mean_kept(-probs.gather(-1, t).log(), targets, ignore_index)


def _ce_sum(logits: Tensor, targets: Tensor, ignore_index: int = -1) -> Tensor:
    z = logits.reshape(-1, logits.shape[-1])
    return torch.nn.functional.cross_entropy(z, targets.reshape(-1), ignore_index=ignore_index,
                                             reduction="sum")


def _ce_last_axis_mean_only(logits: Tensor, targets: Tensor, ignore_index: int = -1) -> Tensor:
    # Averages over the batch but sums over time steps.
    z = torch.log_softmax(logits, dim=-1)
    nll = -z.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    nll = torch.where(targets == ignore_index, 0.0, nll)
    return nll.sum(-1).mean() if nll.dim() > 1 else nll.mean()


def _ce_wrong_target(logits: Tensor, targets: Tensor, ignore_index: int = -1) -> Tensor:
    z = logits.reshape(-1, logits.shape[-1])
    t = targets.reshape(-1)
    shifted = torch.where(t == ignore_index, t, (t + 1) % z.shape[-1])
    return torch.nn.functional.cross_entropy(z, shifted, ignore_index=ignore_index)


def _ce_ignores(kind: str) -> Any:
    def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -1) -> Tensor:
        z = logits.reshape(-1, logits.shape[-1])
        t = targets.reshape(-1)
        if kind == "always_minus_one":  # the argument is not read
            return torch.nn.functional.cross_entropy(z, t, ignore_index=-1)
        # ignored positions left out of the sum but counted in the mean
        nll = torch.nn.functional.cross_entropy(z, t, ignore_index=ignore_index, reduction="sum")
        return nll / len(t)

    return cross_entropy


# ----------------------------------------------------------------------------- AdamW


def _adamw(variant: str) -> Any:
    @torch.no_grad()
    def adamw_step(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int,
                   *, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                   weight_decay: float = 0.01) -> None:
        b1, b2 = betas
        if variant == "swapped_betas":
            b1, b2 = b2, b1
        if variant == "l2_in_gradient":
            grad = grad + weight_decay * param  # Adam + L2, not decoupled
        elif variant == "decay_without_lr":
            param.mul_(1 - weight_decay)
        elif variant != "decay_after_update":
            param.mul_(1 - lr * weight_decay)
        exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
        exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        bc1 = 1 - b1**step
        bc2 = 1 - b2**step
        if variant == "no_bias_correction":
            bc1 = bc2 = 1.0
        if variant == "step_from_zero":
            bc1, bc2 = 1 - b1 ** (step - 1) + 1e-12, 1 - b2 ** (step - 1) + 1e-12
        if variant == "eps_inside_sqrt":
            denom = (exp_avg_sq / bc2 + eps).sqrt()
        else:
            denom = (exp_avg_sq / bc2).sqrt() + eps
        param.addcdiv_(exp_avg, denom, value=-lr / bc1)
        if variant == "decay_after_update":
            param.mul_(1 - lr * weight_decay)

    return adamw_step


def _adamw_mutant(variant: str) -> dict[str, Any]:
    return {"adamw_step": _adamw(variant)}  # every alias (AdamW.step's too) gets the mutant


def _adamw_class_step(variant: str) -> Callable[..., float | None]:
    """``AdamW.step`` with a bug in what is not the default: no grads, lr changes, reloads."""

    @torch.no_grad()
    def step(self: AdamW, closure: Callable[[], float] | None = None) -> float | None:
        if variant == "step_count_on_the_optimizer":  # one counter, not in the state_dict
            self.t = getattr(self, "t", 0) + 1  # type: ignore[attr-defined]
        for group in self.param_groups:
            lr = self.defaults["lr"] if variant == "lr_fixed_at_construction" else group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    if variant == "decays_params_without_grad":
                        p.mul_(1 - lr * group["weight_decay"])
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                if variant == "step_count_on_the_optimizer":
                    state["step"] = self.t  # type: ignore[attr-defined]
                optim_module.adamw_step(
                    p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                    lr=lr, betas=group["betas"], eps=group["eps"],
                    weight_decay=group["weight_decay"],
                )
        return None

    return step


# ----------------------------------------------------------------------------- schedule


def _schedule(variant: str) -> Any:
    def cosine_lr(step: int, *, max_lr: float, min_lr: float, warmup_steps: int,
                  decay_steps: int) -> float:
        if step < warmup_steps:
            if variant == "warmup_from_zero":
                return max_lr * step / warmup_steps
            if variant == "warmup_denominator_plus_one":
                return max_lr * (step + 1) / (warmup_steps + 1)
            return max_lr * (step + 1) / warmup_steps
        if step > decay_steps and variant != "no_floor":
            return min_lr
        span = decay_steps - warmup_steps
        if variant == "ratio_over_all_steps":
            ratio = step / decay_steps if decay_steps else 0.0
        else:
            ratio = (step - warmup_steps) / span if span > 0 else 0.0
        coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
        if variant == "decays_to_zero":
            return coeff * max_lr
        if variant == "no_half":
            return min_lr + (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)
        return min_lr + coeff * (max_lr - min_lr)

    return cosine_lr


# ----------------------------------------------------------------------------- clipping


def _clip(variant: str) -> Any:
    @torch.no_grad()
    def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float) -> Tensor:
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return torch.tensor(0.0)
        if variant == "per_tensor":
            norms = []
            for g in grads:
                n = g.norm()
                g.mul_(torch.clamp(max_norm / (n + 1e-6), max=1.0))
                norms.append(n)
            return torch.stack(norms).norm()
        if variant == "sum_of_norms":
            total = torch.stack([g.norm() for g in grads]).sum()
        elif variant == "l1":
            total = torch.stack([g.abs().sum() for g in grads]).sum()
        else:
            total = torch.stack([g.norm() for g in grads]).norm()
        coef = max_norm / (total + 1e-6)
        if variant != "scales_up":
            coef = torch.clamp(coef, max=1.0)
        for g in grads:
            g.mul_(coef)
        if variant == "returns_clipped_norm":
            return torch.stack([g.norm() for g in grads]).norm()
        if variant == "returns_a_float":
            return float(total)  # type: ignore[return-value]
        return total

    return clip_grad_norm


# ----------------------------------------------------------------------------- train step


def _step(variant: str) -> Any:
    def train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                   micro_batches: Sequence[tuple[Tensor, Tensor]], *,
                   grad_clip: float | None = 1.0) -> StepStats:
        if variant == "keeps_zeroed_grads":
            optimizer.zero_grad(set_to_none=False)  # an unreached parameter keeps a zero grad
        elif variant != "no_zero_grad":
            optimizer.zero_grad(set_to_none=True)
        k = len(micro_batches)
        total = 0.0
        for x, y in micro_batches:
            if variant == "zero_grad_each_micro_batch":
                optimizer.zero_grad(set_to_none=True)
            loss = loss_module.cross_entropy(_logits(model(x)), y)
            if variant != "no_loss_division":
                loss = loss / k
            loss.backward()
            total += loss.item()
        if variant == "loss_not_averaged":
            total = total * k
        norm = 0.0 if variant == "norm_zero_without_clipping" else float("nan")
        if grad_clip is not None:
            norm = float(clip_module.clip_grad_norm(model.parameters(), grad_clip))
        optimizer.step()
        return StepStats(loss=total, grad_norm=norm)

    return train_step


MUTANTS: dict[str, dict[str, Any]] = {
    # get_batch
    "targets_not_shifted": {"get_batch": _batch_with(high=0, shift=0)},
    "targets_shifted_by_two": {"get_batch": _batch_with(high=-1, shift=2)},
    "last_start_unreachable": {"get_batch": _batch_with(high=-1, shift=1)},
    "start_past_the_end": {"get_batch": _batch_with(high=1, shift=1)},
    "ignores_the_generator": {"get_batch": _batch_global_rng},
    "batch_left_on_the_cpu": {"get_batch": _batch_on_the_cpu},
    "keeps_the_file_dtype": {"get_batch": _batch_keeps_dtype},
    # cross-entropy
    "softmax_without_max_shift": {"cross_entropy": _ce_naive},
    "loss_summed_not_averaged": {"cross_entropy": _ce_sum},
    "loss_summed_over_time": {"cross_entropy": _ce_last_axis_mean_only},
    "loss_of_the_wrong_target": {"cross_entropy": _ce_wrong_target},
    "softmax_shifted_by_the_global_max": {"cross_entropy": _ce_global_max},
    "log_of_the_softmax": {"cross_entropy": _ce_log_of_softmax},
    "ignore_index_always_minus_one": {"cross_entropy": _ce_ignores("always_minus_one")},
    "ignored_positions_counted_in_the_mean": {"cross_entropy": _ce_ignores("counted")},
    # AdamW
    "adam_no_bias_correction": _adamw_mutant("no_bias_correction"),
    "weight_decay_in_the_gradient": _adamw_mutant("l2_in_gradient"),
    "weight_decay_without_lr": _adamw_mutant("decay_without_lr"),
    "weight_decay_after_the_update": _adamw_mutant("decay_after_update"),
    "eps_inside_sqrt": _adamw_mutant("eps_inside_sqrt"),
    "betas_swapped": _adamw_mutant("swapped_betas"),
    "bias_correction_step_from_zero": _adamw_mutant("step_from_zero"),
    "step_count_on_the_optimizer": {"AdamW.step": _adamw_class_step("step_count_on_the_optimizer")},
    "lr_fixed_at_construction": {"AdamW.step": _adamw_class_step("lr_fixed_at_construction")},
    "params_without_grad_decayed": {"AdamW.step": _adamw_class_step("decays_params_without_grad")},
    # schedule
    "warmup_off_by_one_from_zero": {"cosine_lr": _schedule("warmup_from_zero")},
    "warmup_off_by_one_denominator": {"cosine_lr": _schedule("warmup_denominator_plus_one")},
    "cosine_ratio_ignores_warmup": {"cosine_lr": _schedule("ratio_over_all_steps")},
    "cosine_without_floor": {"cosine_lr": _schedule("no_floor")},
    "cosine_decays_to_zero": {"cosine_lr": _schedule("decays_to_zero")},
    "cosine_without_half": {"cosine_lr": _schedule("no_half")},
    # clipping
    "clip_each_tensor_alone": {"clip_grad_norm": _clip("per_tensor")},
    "clip_sum_of_norms": {"clip_grad_norm": _clip("sum_of_norms")},
    "clip_l1_norm": {"clip_grad_norm": _clip("l1")},
    "clip_scales_small_gradients_up": {"clip_grad_norm": _clip("scales_up")},
    "clip_returns_clipped_norm": {"clip_grad_norm": _clip("returns_clipped_norm")},
    "clip_returns_a_float": {"clip_grad_norm": _clip("returns_a_float")},
    # train step
    "accumulation_without_dividing_the_loss": {"train_step": _step("no_loss_division")},
    "zero_grad_inside_the_accumulation_loop": {"train_step": _step("zero_grad_each_micro_batch")},
    "gradients_never_zeroed": {"train_step": _step("no_zero_grad")},
    "reported_loss_is_the_sum": {"train_step": _step("loss_not_averaged")},
    "unreached_params_keep_a_zero_grad": {"train_step": _step("keeps_zeroed_grads")},
    "grad_norm_zero_without_clipping": {"train_step": _step("norm_zero_without_clipping")},
}

# Survivors of scripts/mutation.py that no test can tell from the solution.
# Hints that teach: the cause the first failing spec test must name for each classic bug
# (a regex, case-insensitive; tests/test_mutants.py checks it).
HINTS: dict[str, str] = {
    "targets_not_shifted": r"y is x itself",
    "start_past_the_end": r"range of starts is off by one",
    "ignores_the_generator": r"generator=generator",
    "keeps_the_file_dtype": r"file's dtype is kept",
    "batch_left_on_the_cpu": r"not moved to the device",
    "last_start_unreachable": r"range of starts is off by one",
    "softmax_without_max_shift": r"subtract each row's max",
    "softmax_shifted_by_the_global_max": r"each row's own max",
    "log_of_the_softmax": r"log\(softmax\)",
    "loss_summed_not_averaged": r"summed over the positions, not averaged",
    "loss_summed_over_time": r"summed over time",
    "loss_of_the_wrong_target": r"wrong logit",
    "ignore_index_always_minus_one": r"ignore_index argument is not read",
    "ignored_positions_counted_in_the_mean": r"ignored positions are counted in the mean",
    "adam_no_bias_correction": r"no bias correction",
    "eps_inside_sqrt": r"eps inside the square root",
    "weight_decay_in_the_gradient": r"weight decay added to the gradient",
    "weight_decay_without_lr": r"weight decay without the learning rate",
    "weight_decay_after_the_update": r"weight decay applied after",
    "betas_swapped": r"betas swapped",
    "warmup_off_by_one_from_zero": r"warm-up starts at 0",
    "warmup_off_by_one_denominator": r"warmup_steps \+ 1",
    "cosine_ratio_ignores_warmup": r"progress ignores the warm-up",
    "cosine_without_floor": r"no floor",
    "cosine_decays_to_zero": r"decays to 0",
    "cosine_without_half": r"lacks its half",
    "clip_each_tensor_alone": r"each tensor is clipped alone",
    "clip_sum_of_norms": r"sum of the tensors' norms",
    "clip_l1_norm": r"L1 norm",
    "clip_scales_small_gradients_up": r"scaled up",
    "clip_returns_clipped_norm": r"after clipping",
    "clip_returns_a_float": r"Python number",
    "accumulation_without_dividing_the_loss": r"divide each one by k",
    "reported_loss_is_the_sum": r"summed, not averaged",
    "zero_grad_inside_the_accumulation_loop": r"zero_grad inside the micro-batch loop",
    "gradients_never_zeroed": r"not zeroed at the start of each step",
    "grad_norm_zero_without_clipping": r"norm reported without clipping",
}

EQUIVALENT: dict[tuple[str, str], str] = {
    ("train_step", 'grad_norm = float("NAN")'): (
        "float() parses 'nan' case-insensitively: float('NAN') is the same nan as float('nan'), "
        "so the StepStats reported without clipping are identical"
    ),
}
