"""The training loop: data, model, AdamW, schedule, mixed precision, evaluation, checkpoints.

Example (a minute of training, so not a doctest)::

    from reference.trainer.config import load_config
    trainer = Trainer(load_config(overrides=["train.max_steps=100", "train.out_dir=runs/x"]))
    result = trainer.fit()                   # trains, evaluates, checkpoints, plots
    print(trainer.sample()[0])               # text from the trained model

Each step: set the learning rate from the cosine schedule, draw ``grad_accum`` micro-batches,
run :func:`step.train_step` (accumulate, clip, AdamW). Every ``eval_interval`` steps the mean
loss over ``eval_steps`` fixed batches of each split is logged; every ``checkpoint_interval``
steps (and at the end) a full checkpoint is written. A NaN or infinite loss stops the run before
the optimizer step with :class:`TrainingDiverged`, naming the last good checkpoint.

Under torchrun, ``train.strategy`` picks how the processes share the work: ``ddp`` (the
default) keeps a full copy of the model on each, ``fsdp`` shards it (``reference/trainer/fsdp.py``:
parameters, gradients and AdamW states split across ranks). Either way a checkpoint is one full
state written by rank 0, so either strategy resumes the other's run.

Any architecture of ``reference.arch`` trains here (``model.arch``). A mixture of experts routes
each token on its own, so data parallelism shards it exactly, but its load-balancing loss is
each process's, over its own micro-batch (as Mixtral computes it per device): with
``router_aux_loss_coef > 0``, N processes are close to, not equal to, one on the combined batch.
"""

from __future__ import annotations

import json
import math
import resource
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from filelock import FileLock
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..arch import build_model
from ..checkpoint import TRAINER_NAME, WEIGHTS_NAME, Model, load_weights, read_safetensors
from ..inference import SampleSettings, prompt_ids, resolve_device, sample_text
from ..llama import Llama, LlamaConfig
from ..model import GPTConfig
from ..tokenizers import Tokenizer, gpt2_tokenizer
from .checkpoint import load_training_state, restore_rng, save_training_checkpoint
from .config import Config, check_resume_changes, config_from_dict, parse_overrides
from .corpora import (
    MarkovSource,
    builtin_corpus,
    hf_dataset,
    jsonl_file,
    text_file,
    tiny_shakespeare,
)
from .data import (
    TokenData,
    corpus_fingerprint,
    get_batch,
    load_token_data,
    prepare_markov,
    prepare_text,
    reusable,
    train_bpe_tokenizer,
)
from .distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_object,
    device_for,
    init_distributed,
    launched_by_torchrun,
)
from .fsdp import (
    FSDP2,
    full_model_state,
    full_optimizer_state,
    load_full_state,
    plain_copy,
    shard_model,
)
from .monitor import Monitor
from .optim import cosine_lr, make_optimizer
from .rundir import RunDirectoryError, claim, run_directory_of
from .sft import (
    SFTData,
    exact_match,
    finetune_config,
    finetune_model,
    grown_weights,
    load_finetune_weights,
    prepare_sft,
    save_adapter_files,
    sft_batches,
)
from .step import NonFiniteLoss, cross_entropy, train_step


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint stays."""


@dataclass(frozen=True)
class TrainResult:
    """How a run ended: the step reached, the last losses, speed and memory."""

    step: int
    train_loss: float  # the last evaluation's (mean over eval_steps batches)
    val_loss: float
    checkpoint: Path | None
    seconds: float  # wall-clock of fit(), evaluation and checkpoints included
    tokens_per_s: float  # training throughput, evaluation excluded
    peak_memory_mb: float  # CUDA: peak allocated; CPU: peak resident set of the process
    exact_match: float | None = None  # fine-tuning: held-out answers written exactly (0..1)


def data_dir(config: Config) -> Path:
    return Path(config.data.dir) if config.data.dir else Path(config.train.out_dir) / "data"


def prepare_data(config: Config, *, progress: bool = True) -> TokenData:
    """Tokenize the configured corpus into :func:`data_dir` (reused when already there)."""
    d, directory = config.data, data_dir(config)
    if d.source == "markov":
        source = MarkovSource(d.markov_vocab_size, d.markov_order, d.markov_concentration, d.seed)
        return prepare_markov(source, directory, n_tokens=d.markov_tokens,
                              val_fraction=d.val_fraction, seed=d.seed)
    if d.source == "builtin":
        corpus = builtin_corpus()
    elif d.source == "shakespeare":
        corpus = tiny_shakespeare(d.path)
    elif d.source == "text":
        corpus = text_file(str(d.path))
    elif d.source == "jsonl":
        corpus = jsonl_file(str(d.path), field=d.jsonl_field)
    else:
        corpus = hf_dataset(d.hf_name, config=d.hf_config, split=d.hf_split,
                            max_documents=d.max_documents)
    spec = {"char": "char", "bpe": f"bpe:{d.bpe_vocab_size}",
            "gpt2": f"gpt2:{d.tokenizer_path}"}[d.tokenizer]
    if existing := reusable(directory, corpus_fingerprint(corpus, spec, d.val_fraction)):
        return existing
    tokenizer: Tokenizer | None = None
    if d.tokenizer == "gpt2":
        tokenizer = gpt2_tokenizer(str(d.tokenizer_path))
    elif d.tokenizer == "bpe":
        tokenizer = train_bpe_tokenizer(corpus.text(), d.bpe_vocab_size)
    return prepare_text(corpus, directory, tokenizer=tokenizer, tokenizer_spec=spec,
                        val_fraction=d.val_fraction, progress=progress)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class ExpertCounter:
    """Forward hook of a mixture of experts: the tokens each expert received, summed over the
    training passes since ``counts`` was last taken (evaluation's passes are not counted)."""

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None  # (n_layer, n_experts)

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        counts = getattr(module, "last_expert_counts", None)
        if module.training and counts is not None:
            counts = counts.detach().to("cpu", torch.long)
            self.counts = counts if self.counts is None else self.counts + counts


class Trainer:
    """One training run: build with a :class:`Config`, then :meth:`fit`; or :meth:`resume`."""

    def __init__(self, config: Config, *, dist_info: DistInfo | None = None,
                 progress: bool | None = None, overwrite: bool = False,
                 resuming: bool = False) -> None:
        """A new run of ``config`` (refused if ``train.out_dir`` holds one, unless
        ``overwrite``); :meth:`resume` passes ``resuming=True`` to continue one instead."""
        if config.train.decay_steps is None:  # pin the schedule: resuming longer continues it
            config = config_from_dict({"train": {"decay_steps": config.train.max_steps}},
                                      base=config)
        t = config.train
        device_type = resolve_device(t.device).type
        if t.dtype == "float16" and device_type != "cuda":
            raise ValueError("train.dtype=float16 needs CUDA (it trains with a gradient scaler); "
                             "use bfloat16 or float32 on " + device_type)
        self.sharded = t.strategy == "fsdp"
        if self.sharded and config.finetune.enabled:
            raise ValueError("train.strategy=fsdp does not fine-tune yet (finetune.base is set): "
                             "use train.strategy=ddp")
        if self.sharded and not FSDP2:
            raise ValueError(f"train.strategy=fsdp needs FSDP2 (torch >= 2.6); this is torch "
                             f"{torch.__version__}: use train.strategy=ddp")
        if self.sharded and dist_info is None and not launched_by_torchrun():
            raise ValueError("train.strategy=fsdp shards the model across the processes torchrun "
                             "starts: run it under torchrun (--nproc_per_node=1 is fine), or use "
                             "train.strategy=ddp")
        self.dist = dist_info or init_distributed(device_type, always=self.sharded)
        self.device = device_for(self.dist, device_type)
        self._lock: FileLock | None = None
        problem: object = None
        if self.dist.is_main:  # rank 0 decides for every rank
            try:
                self._lock = claim(t.out_dir, resume=resuming, overwrite=overwrite)
            except RunDirectoryError as e:
                problem = str(e)
        problem = broadcast_object(self.dist, problem)
        if problem:
            raise RunDirectoryError(str(problem))
        self.progress = t.progress if progress is None else progress
        if t.threads:
            torch.set_num_threads(t.threads)
        torch.manual_seed(t.seed + self.dist.rank)  # dropout differs between ranks

        self.data: TokenData | SFTData
        if config.finetune.enabled:  # conversations, the base's tokenizer + the chat tokens
            config = finetune_config(config, resuming=resuming)
            self.data = prepare_sft(config, write=self.dist.is_main)
            barrier(self.dist)
        else:
            if self.dist.is_main:  # one process tokenizes; the others wait, then read it
                self.data = prepare_data(config, progress=self.progress)
            barrier(self.dist)
            if not self.dist.is_main:
                self.data = load_token_data(data_dir(config))
        self.config = config = config.with_vocab_size(self.data.vocab_size)
        self.train_tokens: Any = self.data.split("train")
        self.val_tokens: Any = self.data.split("val")
        block = config.model.block_size
        for name, tokens in (("train", self.train_tokens), ("validation", self.val_tokens)):
            if isinstance(self.data, TokenData) and len(tokens) <= block:
                raise ValueError(f"the {name} split has {len(tokens)} tokens, too few for "
                                 f"model.block_size={block}")

        self.model: Model
        if isinstance(self.data, SFTData):
            model, self.base_vocab_size = finetune_model(config, self.data.vocab_size)
            self.model = model.to(self.device)
        else:
            self.model = build_model(config.model).to(self.device)
        self.model.set_activation_checkpointing(t.activation_checkpointing)
        # a mixture of experts: tokens per expert, summed over the training forward passes
        # since the last log line (evaluation's are not counted)
        # (a hook object of its own, not a bound method: the model must not hold the trainer,
        # whose locks cannot be copied, so copy.deepcopy(trainer.model) keeps working)
        self.expert_counter = ExpertCounter()
        if isinstance(self.model, Llama) and self.model.config.n_experts:
            self.model.register_forward_hook(self.expert_counter)
        if self.sharded:  # before the optimizer: it must hold the sharded parameters
            if t.compile:  # each block on its own, then sharded (as torchtitan does)
                for layer in self.model.blocks():
                    layer.compile()
            bf16 = t.dtype == "bfloat16" and device_type == "cuda"
            shard_model(self.model, device_type,
                        reshard_after_forward=t.fsdp_reshard_after_forward,
                        param_dtype=torch.bfloat16 if bf16 else None)
        self.optimizer = make_optimizer(self.model, t, self.device)
        self.scaler = torch.amp.GradScaler(device_type, enabled=t.dtype == "float16")
        self.train_model: nn.Module = self.model
        if t.compile and not self.sharded:
            self.train_model = torch.compile(self.model)  # type: ignore[assignment]
        if self.dist.enabled and not self.sharded:
            ids = [self.dist.local_rank] if device_type == "cuda" else None
            self.train_model = DDP(self.train_model, device_ids=ids)
        self.batch_generator = torch.Generator().manual_seed(t.seed)
        self.step = 0
        self.last_checkpoint: Path | None = None
        self.last_eval: dict[str, float] = {"train": math.nan, "val": math.nan}

    # ------------------------------------------------------------------ pieces

    def autocast(self) -> AbstractContextManager[object]:
        dtype = self.config.train.dtype
        if dtype == "float32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, dtype))

    def lr_at(self, step: int) -> float:
        t = self.config.train
        return cosine_lr(step, max_lr=t.lr, min_lr=t.min_lr, warmup_steps=t.warmup_steps,
                         decay_steps=t.total_decay_steps)

    def batch(self, tokens: Any, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.data, SFTData):  # whole conversations, right padded
            return sft_batches(tokens, self.config.train.batch_size, generator=generator,
                               device=self.device, pad_id=0, rank=self.dist.rank,
                               world_size=self.dist.world_size)
        return get_batch(tokens, self.config.model.block_size, self.config.train.batch_size,
                         generator=generator, device=self.device, rank=self.dist.rank,
                         world_size=self.dist.world_size)

    @property
    def tokens_per_step(self) -> int:
        t = self.config.train
        return t.batch_size * t.grad_accum * self.config.model.block_size * self.dist.world_size

    def train_one_step(self) -> tuple[float, float, float]:
        """One optimizer step; returns (loss, grad_norm, lr). Raises NonFiniteLoss."""
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = [self.batch(self.train_tokens, self.batch_generator)
                 for _ in range(self.config.train.grad_accum)]
        stats = train_step(self.train_model, self.optimizer, micro,
                           grad_clip=self.config.train.grad_clip, autocast=self.autocast,
                           scaler=self.scaler)
        self.step += 1
        return stats.loss, stats.grad_norm, lr

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over ``eval_steps`` batches of each split; the same batches every time."""
        self.model.eval()
        out = {}
        for split, tokens in (("train", self.train_tokens), ("val", self.val_tokens)):
            generator = torch.Generator().manual_seed(self.config.train.seed + 1)
            total = 0.0
            for _ in range(self.config.train.eval_steps):
                x, y = self.batch(tokens, generator)
                with self.autocast():
                    logits, _ = self.model(x)
                total += float(cross_entropy(logits.float(), y))
            out[split] = all_reduce_mean(total / self.config.train.eval_steps, self.dist,
                                         self.device)
        self.model.train()
        self.last_eval = out
        return out

    def save_checkpoint(self) -> Path | None:
        """Write a full checkpoint (rank 0); every rank's RNG state goes into it."""
        rng = torch.get_rng_state()
        ranks = [rng]
        if self.dist.enabled:
            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, rng)
            ranks = gathered
        full: tuple[dict[str, Any], dict[str, Any]] | None = None
        if self.sharded:  # collectives: every rank gathers, rank 0 receives the full state
            full = full_model_state(self.model), full_optimizer_state(self.model, self.optimizer)
        path = None
        if self.dist.is_main:
            try:
                path = self._save_checkpoint(ranks, full)
            except OSError as e:  # a full disk, say: the previous checkpoint is still whole
                where = (f"the previous checkpoint {self.last_checkpoint} is intact (resume "
                         "continues from it)" if self.last_checkpoint else "no checkpoint yet")
                raise OSError(f"could not save the checkpoint of step {self.step} in "
                              f"{self.config.train.out_dir}: {e}; {where}") from None
            self.last_checkpoint = path
        barrier(self.dist)
        return path

    def _save_checkpoint(self, ranks: list[Any],
                         full: tuple[dict[str, Any], dict[str, Any]] | None = None) -> Path:
        finetuning = isinstance(self.data, SFTData)
        # FSDP: rank 0's gathered copy, saved in the single-process format
        model = self.export_model() if full is None else plain_copy(self.config.model, full[0])
        optimizer_state = None if full is None else full[1]
        return save_training_checkpoint(
            self.config.train.out_dir, model=model, optimizer=self.optimizer,
            optimizer_state=optimizer_state,
            extra=(lambda tmp: save_adapter_files(self, tmp)) if finetuning else None,
            step=self.step, config=self.config.to_dict(), data_dir=self.data.directory,
            batch_rng=self.batch_generator.get_state(), torch_rng=ranks,
            scaler=self.scaler if self.scaler.is_enabled() else None,
            keep=self.config.train.keep_checkpoints, last_eval=self.last_eval,
        )

    def export_model(self) -> Model:
        """The model as a plain model (what a checkpoint holds): for a LoRA run, a copy with the
        adapters merged into the weights; otherwise the model itself."""
        from ..lora import LoRALinear, unwrap_lora

        if not any(isinstance(m, LoRALinear) for m in self.model.modules()):
            return self.model
        copy = build_model(self.model.config).to(self.device)
        copy.load_state_dict(unwrap_lora(_detached_copy(self.model)).state_dict())
        return copy

    def expert_utilisation(self) -> dict[str, Any]:
        """A mixture of experts' routing since the last call, for the metrics log (and reset):
        ``expert_fraction`` (n_layer lists of n_experts fractions of the routed tokens, each
        list summing to 1) and ``expert_balance`` (per layer, the busiest expert's count over
        the mean count: 1.0 is perfectly even, n_experts / top_k the worst). Summed over this
        process's training micro-batches; empty for a dense model."""
        counts, self.expert_counter.counts = self.expert_counter.counts, None
        if counts is None:
            return {}
        totals = counts.sum(dim=1, keepdim=True).clamp(min=1).double()
        fractions = counts.double() / totals  # (n_layer, n_experts)
        balance = counts.double().amax(dim=1) / counts.double().mean(dim=1).clamp(min=1e-12)
        return {"expert_fraction": [[round(f, 6) for f in row] for row in fractions.tolist()],
                "expert_balance": [round(b, 6) for b in balance.tolist()]}

    # ------------------------------------------------------------------ resume

    @classmethod
    def resume(cls, path: str | Path, overrides: list[str] | None = None, *,
               dist_info: DistInfo | None = None, progress: bool | None = None) -> Trainer:
        """A trainer in the exact state of the checkpoint at ``path`` (a run dir or checkpoint).

        ``overrides`` may change settings that do not alter the model's shape or the data, e.g.
        ``train.max_steps=4000`` to train longer.
        """
        directory, state = load_training_state(path)
        run_dir = run_directory_of(directory)
        saved = config_from_dict(state.config, origin=str(directory / TRAINER_NAME))
        if saved.train.decay_steps is None:  # a run from before the schedule was pinned
            saved = config_from_dict({"train": {"decay_steps": saved.train.max_steps}},
                                     base=saved)
        config = saved
        if overrides:
            changes = parse_overrides(overrides)
            arch = changes.get("model", {}).get("arch", saved.model.arch)
            if arch != saved.model.arch:  # before its other fields are read as the new arch's
                raise ValueError(f"cannot change model.arch ({saved.model.arch} -> {arch}) when "
                                 f"resuming: the run's weights are a {saved.model.arch} model; "
                                 "start a new run instead")
            config = config_from_dict(changes, base=saved, origin="override")
            check_resume_changes(saved, config)
        if config.train.max_steps < state.step and config.train.max_steps != saved.train.max_steps:
            raise ValueError(f"train.max_steps={config.train.max_steps} is below the step the run "
                             f"reached ({state.step}); give a larger train.max_steps")
        # DIR is resumed wherever it lies: the recorded out_dir is not used for writing.
        config = config_from_dict({"train": {"out_dir": str(run_dir)}}, base=config)
        trainer = cls(config, dist_info=dist_info, progress=progress, resuming=True)
        meta_path = directory / "meta.json"
        if meta_path.is_file():
            saved = json.loads(meta_path.read_text())
            if saved.get("tokenizer") != trainer.data.meta.get("tokenizer"):
                raise ValueError(f"the data in {trainer.data.directory} is tokenized differently "
                                 f"from the checkpoint {directory}")
        if isinstance(trainer.data, SFTData):
            load_finetune_weights(trainer, directory)
            trainer.optimizer.load_state_dict(state.optimizer)
        elif trainer.sharded:  # each rank reads the full state and keeps its own slices
            load_full_state(trainer.model, trainer.optimizer,
                            read_safetensors(directory / WEIGHTS_NAME), state.optimizer)
        else:
            load_weights(trainer.model, read_safetensors(directory / WEIGHTS_NAME,
                                                         device=trainer.device))
            trainer.optimizer.load_state_dict(state.optimizer)
        if state.scaler and trainer.scaler.is_enabled():
            trainer.scaler.load_state_dict(state.scaler)
        trainer.batch_generator.set_state(state.batch_rng)
        restore_rng(state, trainer.dist.rank)
        trainer.step = state.step
        trainer.last_checkpoint = directory
        if state.last_eval:
            trainer.last_eval = dict(state.last_eval)
        return trainer

    # ------------------------------------------------------------------ the loop

    def fit(self, max_steps: int | None = None,
            on_step: Callable[[Trainer], None] | None = None) -> TrainResult:
        """Train until step ``max_steps`` (default ``train.max_steps``); see the module docstring.

        ``on_step(trainer)`` runs after each optimizer step (tests use it to inject faults).
        """
        t = self.config.train
        target = t.max_steps if max_steps is None else max_steps
        if self.dist.is_main and (self._lock is None or not self._lock.is_locked):
            self._lock = claim(t.out_dir, resume=True)  # fit again after a fit: hold it again
        monitor = Monitor(t.out_dir, total_steps=target, start_step=self.step,
                          progress=self.progress, tensorboard=t.tensorboard,
                          enabled=self.dist.is_main)
        if self.step == 0 and self.dist.is_main:
            monitor.message(self._describe())
        start = time.perf_counter()
        train_seconds, window_seconds, window_steps, steps_done = 0.0, 0.0, 0, 0
        try:
            while self.step < target:
                tick = time.perf_counter()
                try:
                    loss, grad_norm, lr = self.train_one_step()
                except NonFiniteLoss as e:
                    where = (f"the last good checkpoint is {self.last_checkpoint}"
                             if self.last_checkpoint else "no checkpoint was written yet")
                    raise TrainingDiverged(
                        f"stopped at step {self.step}: {e}. The weights were not updated with it; "
                        f"{where}. Try a lower train.lr, train.grad_clip, or train.dtype=float32."
                    ) from None
                if on_step is not None:
                    on_step(self)
                elapsed = time.perf_counter() - tick
                train_seconds += elapsed
                window_seconds += elapsed
                window_steps += 1
                steps_done += 1
                monitor.advance()
                if self.step % t.log_interval == 0 or self.step == target:
                    speed = window_steps * self.tokens_per_step / max(window_seconds, 1e-9)
                    monitor.log_train(self.step, loss=loss, lr=lr, tokens_per_s=speed,
                                      grad_norm=grad_norm, **self.expert_utilisation())
                    window_seconds, window_steps = 0.0, 0
                if self.step % t.eval_interval == 0 or self.step == target:
                    losses = self.evaluate()
                    monitor.log_eval(self.step, train_loss=losses["train"], val_loss=losses["val"])
                if self.step % t.every_checkpoint == 0 or self.step == target:
                    self.save_checkpoint()
        finally:
            monitor.close(plot=t.plot)
            self.release()
        speed = steps_done * self.tokens_per_step / train_seconds if train_seconds else math.nan
        accuracy = self.held_out_exact_match() if self.dist.is_main else None
        return TrainResult(
            step=self.step, train_loss=self.last_eval["train"], val_loss=self.last_eval["val"],
            checkpoint=self.last_checkpoint, seconds=time.perf_counter() - start,
            tokens_per_s=speed, peak_memory_mb=peak_memory_mb(self.device), exact_match=accuracy,
        )

    def _describe(self) -> str:
        """The run's first line: what trains, on what, where."""
        where = f"{self.device}, {self.dist.world_size} process(es)"
        if self.sharded:
            where += " (FSDP: parameters, gradients and AdamW states sharded)"
        if not isinstance(self.data, SFTData):
            n = self.model.num_parameters()
            return (f"training a {n / 1e6:.2f}M-parameter {describe_model(self.model.config)} "
                    f"on {where} "
                    f"({self.data.meta['n_tokens']:,} tokens, vocabulary {self.data.vocab_size})")
        ft = self.config.finetune
        params = {id(p): p for p in self.model.parameters()}.values()
        total = sum(p.numel() for p in params)
        grown = list(grown_weights(self.model).values())  # the embedding (and untied head)
        trainable = sum(p.numel() for p in params
                        if p.requires_grad and not any(p is g for g in grown))
        for weight in grown:
            if weight.requires_grad:  # LoRA: only the new rows change (reference/trainer/sft.py)
                rows = weight.size(0) if ft.method == "full" else \
                    weight.size(0) - self.base_vocab_size
                trainable += rows * weight.size(1)
        from ..lora import default_targets

        targets = ft.lora_targets or default_targets(self.model)
        how = (f"LoRA r={ft.lora_r} alpha={ft.lora_alpha:g} on {', '.join(targets)}, "
               f"the {self.data.vocab_size - self.base_vocab_size} chat tokens' embedding rows"
               if ft.method == "lora" else "every weight")
        return (f"fine-tuning {ft.base} on {where}: {self.data.meta['n_train']:,} conversations "
                f"({self.data.meta['n_val']:,} held out); training {how}: {trainable:,} of "
                f"{total:,} parameters ({trainable / total:.2%})")

    def held_out_exact_match(self) -> float | None:
        """Fine-tuning: the exact-match accuracy of greedy answers to the first
        ``finetune.eval_examples`` held-out conversations (None when not fine-tuning)."""
        n = self.config.finetune.eval_examples
        if not isinstance(self.data, SFTData) or n == 0:
            return None
        was_training = self.model.training
        self.model.eval()
        try:
            return exact_match(self.model, self.data.chat, self.data.val_conversations[:n])
        finally:
            self.model.train(was_training)

    def release(self) -> None:
        """Let go of the run directory (done when :meth:`fit` ends, however it ends)."""
        if self._lock is not None:
            self._lock.release(force=True)

    # ------------------------------------------------------------------ sampling

    def check_sample_settings(self) -> None:
        """Raise ValueError now, before training, if the end-of-run sample would fail (a prompt
        the tokenizer cannot encode)."""
        s = self.config.sample
        try:
            prompt_ids(self.data.tokenizer(), s.prompt, self.config.model.block_size)
        except ValueError as e:
            raise ValueError(f"sample.prompt={s.prompt!r}: {e}") from None

    def sample(self, **changes: Any) -> list[str]:
        """Text from the model with the ``sample`` section (fields overridable by keyword).

        The trainer owns its model, so it switches it to eval mode (no dropout) for the sample
        and back afterwards; the inference path itself never changes a model's mode.
        """
        settings = SampleSettings.model_validate({**self.config.sample.model_dump(), **changes})
        if self.sharded:  # a sharded forward pass needs every rank: sample rank 0's checkpoint
            if self.last_checkpoint is None:
                raise RuntimeError("an FSDP run samples from its checkpoint: none written yet")
            weights = read_safetensors(self.last_checkpoint / WEIGHTS_NAME)
            plain = plain_copy(self.config.model, weights).eval()
            return sample_text(plain, self.data.tokenizer(), settings)
        was_training = self.model.training
        self.model.eval()
        try:
            return sample_text(self.model, self.data.tokenizer(), settings)
        finally:
            self.model.train(was_training)



def describe_model(config: GPTConfig | LlamaConfig) -> str:
    """The model's kind in a few words: ``GPT``, ``Llama (n_kv_head 2)``, ``Llama MoE (8
    experts, top-2)``.

    >>> describe_model(LlamaConfig(n_head=4, n_kv_head=2, n_embd=32, n_experts=4))
    'Llama MoE (4 experts, top-2; n_kv_head 2)'
    """
    if isinstance(config, GPTConfig):
        return "GPT"
    kind = f"Llama MoE ({config.n_experts} experts, top-{config.n_experts_per_tok}; " \
        if config.n_experts else "Llama ("
    return f"{kind}n_kv_head {config.n_kv_head})"


def _detached_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters are fresh copies, without gradient hooks
    (a tied parameter stays tied: the memo maps it once)."""
    import copy

    memo: dict[int, Any] = {id(p): nn.Parameter(p.detach().clone(), p.requires_grad)
                            for p in model.parameters()}
    return copy.deepcopy(model, memo)
