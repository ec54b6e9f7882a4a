"""Muon for the hidden matrices, AdamW for the rest: one optimizer, as the speedruns train.

Muon (Keller Jordan, 2024; ``torch.optim.Muon``) updates a weight matrix by the
orthogonalised momentum of its gradient (:func:`newton_schulz`, :func:`muon_step`; derived in
``solutions/muon.py``). It suits the 2-D matrices inside the blocks (attention and feed-forward
projections); embeddings (a lookup, not a linear map of the residual), the LM head, norms,
biases and the mixture-of-experts router keep AdamW, as modded-nanogpt does.

:func:`make_muon_optimizer` returns :class:`MuonAdamW`: one ``torch.optim.Optimizer`` whose
``param_groups`` are a ``torch.optim.Muon`` group (the block matrices) and two AdamW groups
(decayed matrices, undecayed rest), so the trainer's code for one optimizer (``zero_grad``,
``step``, ``state_dict``/``load_state_dict`` for resume, setting ``group["lr"]`` each step)
works unchanged. Each group holds ``lr_scale``: the trainer writes the schedule's AdamW rate
into ``group["lr"]``; :meth:`MuonAdamW.step` steps each group at ``group["lr"] *
group["lr_scale"]`` (``muon_lr / lr`` for the Muon group, 1 for AdamW), so one schedule drives
both peaks.

Example::

    >>> from reference.llama import Llama, LlamaConfig
    >>> model = Llama(LlamaConfig(block_size=8, vocab_size=10, n_layer=1, n_head=2, n_embd=8))
    >>> opt = make_muon_optimizer(model, lr=1e-3, muon_lr=0.02)
    >>> [(g["kind"], len(g["params"]), g["lr_scale"]) for g in opt.param_groups]
    [('muon', 7, 20.0), ('adamw', 1, 1.0), ('adamw', 4, 1.0)]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "NS_COEFFICIENTS", "MuonAdamW", "MuonInDtype", "check_matrix", "make_muon_optimizer",
    "muon_step", "newton_schulz", "split_muon_params",
]

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic, torch.optim.Muon's


def check_matrix(t: Tensor, what: str) -> None:
    """Raise ValueError naming ``what`` and its shape unless ``t`` is 2-D."""
    if t.dim() != 2:
        raise ValueError(f"{what} must be a 2-D matrix (A, B), got shape {tuple(t.shape)}")


def newton_schulz(g: Tensor, steps: int = 5,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """``g`` (A, B) orthogonalised by ``steps`` quintic Newton–Schulz steps in ``dtype``
    (transposed while tall, normalised by its Frobenius norm first): torch.optim.Muon's.

    >>> newton_schulz(torch.diag(torch.tensor([3.0, 4.0])), dtype=torch.float32).diag()
    tensor([0.7229, 1.1192])
    """
    check_matrix(g, "newton_schulz's input")
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T  # the (B, B) Gram matrix is the smaller one
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


@torch.no_grad()
def muon_step(param: Tensor, grad: Tensor, momentum_buffer: Tensor, *, lr: float,
              weight_decay: float = 0.1, momentum: float = 0.95, nesterov: bool = True,
              ns_steps: int = 5, eps: float = 1e-7,
              dtype: torch.dtype = torch.bfloat16) -> None:
    """One ``torch.optim.Muon`` update of ``param`` (A, B) and ``momentum_buffer`` in place:
    momentum (nesterov), :func:`newton_schulz` in ``dtype``, decay by ``lr·weight_decay``, then
    a step of ``lr·sqrt(max(1, A/B))``. With bfloat16 the library trains with
    ``torch.optim.Muon`` itself; :class:`MuonInDtype` uses this for other dtypes."""
    check_matrix(param, "muon_step's param")
    momentum_buffer.lerp_(grad, 1 - momentum)
    update = grad.lerp(momentum_buffer, momentum) if nesterov else momentum_buffer
    update = newton_schulz(update, ns_steps, eps=eps, dtype=dtype)
    param.mul_(1 - lr * weight_decay)
    param.add_(update, alpha=-lr * math.sqrt(max(1.0, param.size(0) / param.size(1))))


def split_muon_params(model: nn.Module) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """``(muon, decay, no_decay)``: trainable 2-D weights of the blocks' linear layers for Muon;
    AdamW gets the other matrices (the LM head, decayed) and everything else (embeddings, norms,
    biases, the router ``mlp.gate``: not decayed). A tied head is the embedding. Each parameter
    appears once."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    routers = {id(gate.weight) for m in model.modules()  # a mixture of experts' router
               if hasattr(m, "experts") and isinstance(gate := getattr(m, "gate", None), nn.Linear)}
    in_linear = {id(m.weight) for name, m in model.named_modules()
                 if isinstance(m, nn.Linear) and not name.endswith("lm_head")}
    muon: list[Tensor] = []
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    for p in model.parameters():  # deduplicated: a tied weight once
        if not p.requires_grad:
            continue
        if p.dim() == 2 and id(p) in in_linear and id(p) not in embeddings | routers:
            muon.append(p)
        elif p.dim() >= 2 and id(p) not in embeddings | routers:
            decay.append(p)
        else:
            no_decay.append(p)
    return muon, decay, no_decay


class MuonInDtype(torch.optim.Muon):
    """``torch.optim.Muon`` with its Newton–Schulz in ``ns_dtype`` (torch's is always
    bfloat16, which CPUs without bfloat16 matrix units run about 20 times slower than float32:
    38 ms against 2 ms for a (384, 128) matrix on this 2-core AVX2 machine). Same groups, same
    ``momentum_buffer`` state, so its state dict is torch.optim.Muon's."""

    def __init__(self, params: Any, *, ns_dtype: torch.dtype, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                a, b, c = group["ns_coefficients"]
                if (a, b, c) != NS_COEFFICIENTS or group["adjust_lr_fn"] not in (None, "original"):
                    raise ValueError("MuonInDtype runs the default coefficients and lr rule only")
                muon_step(p, p.grad, state["momentum_buffer"], lr=group["lr"],
                          weight_decay=group["weight_decay"], momentum=group["momentum"],
                          nesterov=group["nesterov"], ns_steps=group["ns_steps"],
                          eps=group["eps"], dtype=self.ns_dtype)
        return loss


class MuonAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` over the groups of kind ``"muon"`` and ``torch.optim.AdamW`` over
    those of kind ``"adamw"``, as one optimizer: shared ``param_groups`` and ``state``, so
    ``state_dict`` / ``load_state_dict`` round-trip both. Each group steps at
    ``group["lr"] * group["lr_scale"]``."""

    def __init__(self, muon_groups: list[dict[str, Any]], adamw_groups: list[dict[str, Any]],
                 *, muon_kwargs: dict[str, Any], adamw_kwargs: dict[str, Any]) -> None:
        for g in muon_groups:
            g.setdefault("kind", "muon")
        for g in adamw_groups:
            g.setdefault("kind", "adamw")
        ns_dtype = muon_kwargs.pop("ns_dtype", torch.bfloat16)
        self.muon = (torch.optim.Muon(muon_groups, **muon_kwargs) if ns_dtype == torch.bfloat16
                     else MuonInDtype(muon_groups, ns_dtype=ns_dtype, **muon_kwargs))
        self.adamw = torch.optim.AdamW(adamw_groups, **adamw_kwargs)
        super().__init__([*self.muon.param_groups, *self.adamw.param_groups], {})
        self._share()

    def _share(self) -> None:
        """Point the inner optimizers at this one's groups and state (after a load too)."""
        self.muon.param_groups = [g for g in self.param_groups if g["kind"] == "muon"]
        self.adamw.param_groups = [g for g in self.param_groups if g["kind"] == "adamw"]
        self.muon.state = self.adamw.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # builds new group dicts and a new state
        self._share()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        scheduled = [g["lr"] for g in self.param_groups]
        for g in self.param_groups:
            g["lr"] = g["lr"] * g["lr_scale"]
        try:
            self.muon.step()  # type: ignore[no-untyped-call]
            self.adamw.step()
        finally:
            for g, lr in zip(self.param_groups, scheduled, strict=True):
                g["lr"] = lr  # the trainer's value, as it set it
        return loss


def make_muon_optimizer(model: nn.Module, *, lr: float, muon_lr: float = 0.02,
                        weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.99),
                        momentum: float = 0.95, eps: float = 1e-8, fused: bool = False,
                        ns_dtype: torch.dtype | None = None) -> MuonAdamW:
    """Muon (peak ``muon_lr``, ``momentum``, nesterov, ``weight_decay``) for the block matrices
    and AdamW (peak ``lr``, ``betas``, ``eps``) for the rest (:func:`split_muon_params`), as one
    optimizer whose groups all start at ``lr`` with ``lr_scale`` ``muon_lr / lr`` (Muon) or 1.

    ``ns_dtype``: the Newton–Schulz dtype; None is bfloat16 (``torch.optim.Muon`` itself) when
    the matrices are on CUDA and float32 (:class:`MuonInDtype`) elsewhere.
    """
    if lr <= 0 or muon_lr <= 0:
        raise ValueError(f"lr and muon_lr must be > 0, got lr={lr}, muon_lr={muon_lr}")
    muon, decay, no_decay = split_muon_params(model)
    if not muon:
        raise ValueError(f"{type(model).__name__} has no block matrix for Muon to train")
    scale = muon_lr / lr
    if ns_dtype is None:
        ns_dtype = torch.bfloat16 if muon[0].device.type == "cuda" else torch.float32
    return MuonAdamW(
        [{"params": muon, "lr": lr, "lr_scale": scale, "weight_decay": weight_decay}],
        [g for g in ({"params": decay, "lr": lr, "lr_scale": 1.0, "weight_decay": weight_decay},
                     {"params": no_decay, "lr": lr, "lr_scale": 1.0, "weight_decay": 0.0})
         if g["params"]],  # GPT's tied head leaves no AdamW matrix
        muon_kwargs={"lr": lr, "momentum": momentum, "nesterov": True, "ns_dtype": ns_dtype},
        adamw_kwargs={"lr": lr, "betas": betas, "eps": eps, "fused": fused},
    )
