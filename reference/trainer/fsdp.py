"""Fully sharded data parallelism (FSDP2, ``torch.distributed.fsdp.fully_shard``), for models
whose parameters, gradients and AdamW states do not fit one device.

With ``train.strategy=ddp`` every process holds the whole model, its gradients and AdamW's two
moments: 16 bytes per parameter in float32 (4 + 4 + 8), on every rank. With
``train.strategy=fsdp`` each rank keeps only a 1/world_size slice of each tensor (a ``DTensor``
sharded on dim 0); a transformer block's full weights exist only while it runs: its forward
pass all-gathers them and drops them again (``reshard_after_forward``), its backward pass
all-gathers them again and reduce-scatters the gradients, so each rank ends with the averaged
gradient of its own slice, and AdamW updates the slices. The result is the same optimizer step
as DDP's (up to the order of floating-point sums).

Wrapping follows torch's FSDP2 tutorial and torchtitan: :func:`shard_model` calls
``fully_shard`` on every block, then on the root (the embeddings, the final norm, the tied LM
head), so one block's all-gather overlaps the previous block's compute.

A checkpoint stays one file in the format a single process writes: :func:`full_model_state` and
:func:`full_optimizer_state` gather the full tensors onto rank 0's CPU (every rank must call them:
they are collectives), and :func:`load_full_state` shards a full state into the model and the
optimizer on every rank, so a run can resume with another strategy or another world size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..checkpoint import M, Model, retie, skeleton, tied_keys
from ..llama import Llama, LlamaConfig
from ..model import GPTConfig

try:  # FSDP2's public API (torch >= 2.6)
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import DTensor
except ImportError:  # an older torch trains with DDP only: train.strategy=fsdp is refused
    FSDP2 = False
else:
    FSDP2 = True

__all__ = ["FSDP2", "clip_grad_norm", "full_model_state", "full_optimizer_state", "is_sharded",
           "load_full_state", "plain_copy", "shard_model"]


def _gather() -> StateDictOptions:
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _scatter() -> StateDictOptions:
    return StateDictOptions(full_state_dict=True)  # every rank passes the full state


def shard_model(model: M, device_type: str, *, reshard_after_forward: bool = True,
                param_dtype: torch.dtype | None = None) -> M:
    """Shard ``model`` in place across the default process group, whose processes train on
    ``device_type`` (``"cpu"``: gloo, ``"cuda"``: NCCL); return it.

    ``param_dtype=torch.bfloat16`` runs forward and backward with bf16 weights (the all-gathers
    move half the bytes) while the sharded parameters, AdamW's states and the gradient
    reduction stay float32. Build the optimizer *after* this call: it must hold the sharded
    parameters. Every rank starts from rank 0's weights, as with DDP (each rank initialised
    its own copy from its own seed).
    """
    with torch.no_grad():
        for p in model.parameters():  # (a tied tensor is listed once)
            dist.broadcast(p, src=0)
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))  # 1-D: plain data parallel
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32
                              if param_dtype is not None else None)
    for block in model.blocks():  # GPT's transformer.h, Llama's model.layers
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp)
    # The root's parameters are gathered for the whole step: resharding them after the forward
    # pass would only gather them again for the LM head's backward.
    fully_shard(model, mesh=mesh, reshard_after_forward=False, mp_policy=mp)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether ``fully_shard`` sharded ``model`` (its parameters are DTensors)."""
    return FSDP2 and isinstance(model, FSDPModule)


def clip_grad_norm(params: list[Tensor], max_norm: float) -> Tensor:
    """``clip_grad_norm_`` for sharded (DTensor) gradients, by the norm of the *whole*
    gradient: each rank's norm of its slices, combined over ranks (``full_tensor``), made
    explicit. Returns that norm, before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def full_model_state(model: nn.Module) -> dict[str, Tensor]:
    """The whole model's state dict on rank 0's CPU (an empty dict on the other ranks)."""
    state: dict[str, Tensor] = get_model_state_dict(model, options=_gather())  # type: ignore[assignment]
    return state


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter the optimizer holds, in its order: index i of a plain
    ``optimizer.state_dict()`` is ``names[i]``."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's whole state on rank 0's CPU, in the layout of a plain
    ``optimizer.state_dict()`` (state and param groups by parameter index), so the checkpoint
    is the one DDP or one process writes. An empty dict on the other ranks."""
    by_name: Any = get_optimizer_state_dict(model, optimizer, options=_gather())
    if not by_name:
        return {}
    index = {name: i for i, name in enumerate(_parameter_names(model, optimizer))}
    groups = [{**group, "params": [index[name] for name in group["params"]]}
              for group in by_name["param_groups"]]
    return {"state": {index[name]: s for name, s in by_name["state"].items()},
            "param_groups": groups}


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                    weights: Mapping[str, Tensor], optimizer_state: Mapping[str, Any]) -> None:
    """Shard full ``weights`` (a checkpoint's, on CPU) and a plain ``optimizer_state`` (by
    parameter index) into a sharded ``model`` and its ``optimizer``; every rank calls it with
    the same full state."""
    full: dict[str, Any] = dict(weights)
    for tied, kept in tied_keys(cast(Model, model)).items():  # stored once, as the embedding
        full.setdefault(tied, full[kept])
    set_model_state_dict(model, full, options=_scatter())
    names = _parameter_names(model, optimizer)
    by_name: Any = {
        "state": {names[int(i)]: s for i, s in optimizer_state["state"].items()},
        "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]}
                         for group in optimizer_state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=_scatter())


def plain_copy(config: GPTConfig | LlamaConfig, weights: Mapping[str, Tensor]) -> Model:
    """A plain (unsharded) CPU model of ``config``'s architecture holding ``weights``, built
    without initialising new weights (what rank 0 hands to ``save_checkpoint``, and what
    samples after an FSDP run).

    Example::

        >>> from reference.model import GPT
        >>> config = GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=8)
        >>> model = GPT(config)
        >>> copy = plain_copy(config, model.state_dict())
        >>> copy.lm_head.weight is copy.transformer.wte.weight  # still tied
        True
        >>> bool((copy.transformer.wpe.weight == model.transformer.wpe.weight).all())
        True
    """
    model = skeleton(config)
    tied = set(tied_keys(model))
    given = {k: v for k, v in weights.items() if k not in tied}
    missing = set(model.load_state_dict(given, strict=False, assign=True).missing_keys)
    if missing - tied:
        raise ValueError(f"weights do not fit the model: missing {sorted(missing - tied)}")
    if isinstance(model, Llama) and model.rope_cos.is_meta:  # not in the state dict: make them
        model._set_rope_tables(torch.device("cpu"))
    return retie(model)  # assign=True replaced the tied tensor
