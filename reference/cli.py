"""The project's command line: ``python -m reference <command>`` (or ``llm-from-scratch``).

Commands::

    train     [--config FILE] [section.key=value ...]   train, then print a sample
    prepare   [--config FILE] [section.key=value ...]   only tokenize the data
              [--dry-run]                               (train, prepare, finetune) validate the
                                                        config, print it as YAML, run nothing
    resume    RUN_DIR [section.key=value ...]           continue a run from its last checkpoint
    finetune  BASE DATA.jsonl [section.key=value ...]   fine-tune a trained model on conversations
    task      reverse|add OUT.jsonl [--n N] [--seed S]  write a generated instruction dataset
    generate  CHECKPOINT [--prompt TEXT] [--temperature T] [--top-k K] [--top-p P] [--seed S]
              [--max-new-tokens N] [--num-samples N]    text from a trained model
              [--int8 float|dynamic]                    ... with int8 linear layers
              [--context N] [--rope-scaling ...] [--sliding-window W] [--slide]
                                                        ... past the training length
    quantize  CHECKPOINT OUT_DIR                        an int8 copy of a model checkpoint
    serve     [RUN_DIR] [--host H] [--port P]           the HTTP server (settings: LLMFS_SERVE_*)
    evaluate  RUN_DIR [--compare RUN_DIR2 | --compare-int8 float|dynamic] [--out DIR]
              [--text FILE] [--overwrite]               a Markdown + HTML report with plots
              [--context N] [--rope-scaling linear:F|yarn:F] [--sliding-window W]
                                                        ... past the training length

With no arguments, ``train`` runs the main job: a small character-level GPT on the built-in
corpus (Python's own documentation), a few minutes on a laptop CPU, no download; then a sample.
Multi-process training: ``torchrun --nproc_per_node=2 -m reference train ...``.

Errors are one line on stderr, ``error: ...``, naming the file, setting or value at fault; no
traceback unless ``--debug`` is given or ``LLMFS_DEBUG=1`` is set. Warnings are one line too.

Exit codes: 0 done; 1 the run failed (training diverged, or an unexpected error); 2 bad input
(a usage error, a bad setting, a missing or unreadable file, a run directory in use); 130
interrupted (Ctrl-C: the last checkpoint is intact, ``resume`` continues from it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .console import (
    BAD_INPUT,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    debugging,
    one_line_warnings,
    report,
)

if TYPE_CHECKING:
    from torch import nn

    from .trainer.config import Config
    from .trainer.loop import Trainer

EXAMPLES = """examples:
  python -m reference train                                   # the main job (CPU, minutes)
  python -m reference train --config configs/shakespeare_char.yaml train.max_steps=500
  python -m reference resume runs/main train.max_steps=3000
  python -m reference finetune runs/main data.jsonl train.out_dir=runs/chat finetune.lora_r=16
  python -m reference generate runs/main --prompt "def " --temperature 0.7 --seed 1
  python -m reference quantize runs/main runs/main-int8       # int8 weights, 0.3x the bytes
  LLMFS_SERVE_API_KEYS='["s3cret"]' python -m reference serve runs/main --port 8000
  python -m reference evaluate runs/main --compare runs/reverse   # -> runs/main/eval/report.md
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reference", description="Train and sample a GPT from scratch.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (or set LLMFS_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", help="a YAML config (e.g. configs/tiny_cpu.yaml)")
        p.add_argument("overrides", nargs="*", metavar="section.key=value",
                       help="settings over the config, e.g. train.lr=3e-4 model.n_layer=6")
        dry_run_arg(p)

    def dry_run_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dry-run", action="store_true",
                       help="validate the config and the overrides, print the resolved config "
                            "as YAML and exit (nothing is read, downloaded or written)")

    train = sub.add_parser("train", help="train a model, then print a sample")
    config_args(train)
    train.add_argument("--no-sample", action="store_true", help="do not generate at the end")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run already in train.out_dir (its checkpoints, metrics "
                       "and plots) instead of refusing")
    prepare = sub.add_parser("prepare", help="tokenize the configured data only")
    config_args(prepare)
    resume = sub.add_parser("resume", help="continue a run from its latest checkpoint")
    resume.add_argument("run", help="the run directory (train.out_dir) or a checkpoint")
    resume.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="e.g. train.max_steps=4000 to train longer")
    resume.add_argument("--no-sample", action="store_true")
    task = sub.add_parser("task", help="write a generated instruction dataset (JSONL)")
    task.add_argument("name", choices=("reverse", "add"),
                      help="reverse: 'reverse: kqzd' -> 'dzqk'; add: 'add: 38+705' -> '743'")
    task.add_argument("out", help="a new JSONL file")
    task.add_argument("--n", type=int, default=5000, help="conversations (default 5000)")
    task.add_argument("--seed", type=int, default=0)
    tune = sub.add_parser("finetune", help="fine-tune a trained model on conversations (LoRA "
                          "by default), then answer the held-out ones")
    tune.add_argument("base", help="the run directory or checkpoint to start from")
    tune.add_argument("data", help="JSONL: {\"messages\": [...]} or {\"instruction\", "
                                   "\"input\", \"output\"} per line")
    tune.add_argument("--config", "-c", help="a YAML config (train, sample, finetune sections)")
    tune.add_argument("overrides", nargs="*", metavar="section.key=value",
                      help="e.g. finetune.method=full train.lr=1e-3 (train.out_dir default: "
                           "runs/finetune)")
    tune.add_argument("--no-sample", action="store_true")
    dry_run_arg(tune)
    tune.add_argument("--overwrite", action="store_true",
                      help="replace the run in train.out_dir if there is one")
    gen = sub.add_parser("generate", help="generate text from a checkpoint (streamed)",
                         description="Each option defaults to the run's own sample settings.")
    gen.add_argument("checkpoint", help="a run directory or a checkpoint directory")
    gen.add_argument("--prompt", "-p")
    gen.add_argument("--max-new-tokens", "-n", type=int)
    gen.add_argument("--temperature", "-t", type=float, help="0: greedy")
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--top-p", type=float, help="1.0: no nucleus filter")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--num-samples", type=int, help="more than 1: drawn as one batch")
    gen.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    gen.add_argument("--no-cache", action="store_true",
                     help="run the whole context every step instead of the KV cache (slower)")
    gen.add_argument("--context", type=int,
                     help="Llama-style runs: read up to N tokens at once, past the trained "
                          "block_size (rotary positions extrapolate)")
    gen.add_argument("--rope-scaling", metavar="linear:F|yarn:F",
                     help="Llama-style runs: position interpolation or YaRN by a factor F")
    gen.add_argument("--sliding-window", type=int, metavar="W",
                     help="Llama-style runs: each token sees only the W tokens up to itself")
    gen.add_argument("--slide", action="store_true",
                     help="Llama-style runs: past block_size, slide the KV cache (exact for a "
                          "sliding-window model) instead of re-running the last block_size")
    gen.add_argument("--int8", choices=("float", "dynamic"),
                     help="quantize the blocks' linear layers to int8 first (reference/"
                          "quantization.py): float = weight-only, dynamic = int8 activations too")
    quant = sub.add_parser("quantize", help="write an int8 copy of a model checkpoint")
    quant.add_argument("checkpoint", help="a run directory or a checkpoint directory")
    quant.add_argument("out", help="a new directory for the quantized checkpoint")
    serve = sub.add_parser("serve", help="serve a model over HTTP (OpenAI-compatible)",
                           description="Settings come from LLMFS_SERVE_* environment variables "
                                       "(reference/server/settings.py); the arguments override "
                                       "them.")
    serve.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                       help="a run or checkpoint directory (default: LLMFS_SERVE_MODEL, else "
                            "runs/main)")
    serve.add_argument("--host", help="default 127.0.0.1")
    serve.add_argument("--port", type=int, help="default 8000")
    evaluate = sub.add_parser(
        "evaluate", help="write an evaluation report (Markdown + HTML + PNG plots)",
        description="Perplexity, calibration, loss curves, samples and their error analysis "
                    "of a run, on --text FILE or the run's own validation split.")
    evaluate.add_argument("run", help="a run directory or a checkpoint directory")
    evaluate.add_argument("--compare", metavar="RUN_DIR2",
                          help="a second run or checkpoint, side by side (same text, prompts)")
    evaluate.add_argument("--compare-int8", choices=("float", "dynamic"),
                          help="compare with the same model's int8 copy (reference/"
                               "quantization.py)")
    evaluate.add_argument("--out", help="the report's directory (default RUN_DIR/eval)")
    evaluate.add_argument("--text", metavar="FILE",
                          help="UTF-8 text to evaluate on (default: the run's validation split)")
    evaluate.add_argument("--overwrite", action="store_true",
                          help="replace a report already in the output directory")
    evaluate.add_argument("--prompt", action="append", dest="prompts", metavar="TEXT",
                          help="a sample prompt (repeatable; default: the run's sample prompt "
                               "and the text's first line)")
    evaluate.add_argument("--temperature", action="append", type=float, dest="temperatures",
                          help="repeatable (default 0.5, 0.8, 1.0)")
    evaluate.add_argument("--seed", action="append", type=int, dest="seeds",
                          help="repeatable (default 0, 1)")
    evaluate.add_argument("--max-new-tokens", type=int, default=200)
    evaluate.add_argument("--context", type=int,
                          help="tokens per window (default block_size; past it for a "
                               "Llama-style run: rotary positions extrapolate)")
    evaluate.add_argument("--rope-scaling", metavar="linear:F|yarn:F",
                          help="Llama-style runs: position interpolation (linear) or YaRN by a "
                               "factor F, over the trained block_size")
    evaluate.add_argument("--sliding-window", type=int, metavar="W",
                          help="Llama-style runs: each token sees only the W tokens up to "
                               "itself (W <= block_size: only trained distances)")
    evaluate.add_argument("--stride", type=int, help="window stride (default the context)")
    evaluate.add_argument("--max-chars", type=int, default=100_000,
                          help="evaluate on the text's first N characters (default 100000)")
    evaluate.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list == ["--debug"]:
        args_list = [*args_list, "train"]
    parser = _parser()
    args, extra = parser.parse_known_args(args_list)
    # argparse takes the overrides only before the first flag: gather those given after one
    if extra and hasattr(args, "overrides") and all(
            "=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = debugging(args.debug)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "train": _train, "prepare": _train, "resume": _resume, "finetune": _finetune,
        "task": _task, "generate": _generate, "quantize": _quantize,
        "serve": _serve, "evaluate": _evaluate}
    if args.command not in commands:
        _parser().print_help()
        return EXIT_BAD_INPUT
    with one_line_warnings():
        try:
            return commands[args.command](args)
        except KeyboardInterrupt:
            print("interrupted: the last checkpoint written is intact (resume continues from it)",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
        except BAD_INPUT as e:
            if not _echo_of_rank_0(e):
                report(e, debug=debug)
            return EXIT_BAD_INPUT
        except Exception as e:  # a bug or an unforeseen failure: still one line by default
            report(e, debug=debug, unexpected=True)
            return EXIT_FAILED


def _echo_of_rank_0(error: BaseException) -> bool:
    """Under torchrun, a decision rank 0 made for every rank (a run directory refused) is
    reported by rank 0 alone."""
    from .trainer.rundir import RunDirectoryError

    return isinstance(error, RunDirectoryError) and os.environ.get("RANK", "0") != "0"


def _train(args: argparse.Namespace) -> int:
    from .trainer.config import load_config
    from .trainer.loop import prepare_data

    config = load_config(args.config, args.overrides)
    if args.dry_run:
        return _dry_run(config)
    if args.command == "prepare":
        data = prepare_data(config, progress=config.train.progress)
        meta = data.meta
        print(f"{meta['n_tokens']:,} tokens ({meta['n_train']:,} train), vocabulary "
              f"{meta['vocab_size']}, {meta['dtype']}, in {data.directory}")
        return 0
    from .trainer.loop import Trainer

    return _run(lambda: Trainer(config, overwrite=args.overwrite), args.no_sample)


def _task(args: argparse.Namespace) -> int:
    from .tasks import TASKS, write_jsonl

    if args.n < 2:
        raise ValueError(f"--n {args.n}: give at least 2 conversations")
    path = write_jsonl(args.out, TASKS[args.name](args.n, seed=args.seed))
    print(f"{path}: {args.n} {args.name} conversations (seed {args.seed})")
    return EXIT_OK


def _finetune(args: argparse.Namespace) -> int:
    from .trainer.config import load_config
    from .trainer.loop import Trainer

    overrides = [f"finetune.base={args.base}", f"finetune.data={args.data}", *args.overrides]
    if not any(o.startswith("train.out_dir=") for o in args.overrides):
        overrides.insert(0, "train.out_dir=runs/finetune")
    config = load_config(args.config, overrides)
    if args.dry_run:
        return _dry_run(config)
    return _run(lambda: Trainer(config, overwrite=args.overwrite), args.no_sample)


def _dry_run(config: Config) -> int:
    """Print the resolved config as YAML (what the run would record) and touch nothing."""
    from .trainer.config import dump_config

    print(dump_config(config), end="")
    print("dry run: the config is valid; nothing was read, downloaded or written "
          "(model.vocab_size comes from the tokenizer when the run starts)", file=sys.stderr)
    return EXIT_OK


def _resume(args: argparse.Namespace) -> int:
    from .trainer.loop import Trainer

    return _run(lambda: Trainer.resume(args.run, args.overrides), args.no_sample)


def _run(make: Callable[[], Trainer], no_sample: bool) -> int:
    from .trainer.distributed import cleanup
    from .trainer.loop import TrainingDiverged

    trainer = make()
    sampling = not no_sample and trainer.config.sample.max_new_tokens > 0
    if sampling:
        trainer.check_sample_settings()
    try:
        result = trainer.fit()
    except TrainingDiverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        cleanup(trainer.dist)
        return EXIT_FAILED
    if trainer.dist.is_main:
        print(f"done: step {result.step}, train loss {result.train_loss:.4f}, "
              f"val loss {result.val_loss:.4f}, {result.seconds:.0f} s, "
              f"{result.tokens_per_s:,.0f} tokens/s, peak memory {result.peak_memory_mb:,.0f} MiB")
        print(f"checkpoint: {result.checkpoint}")
        if result.exact_match is not None:
            n = min(trainer.config.finetune.eval_examples, len(trainer.val_tokens))
            print(f"held-out exact match: {result.exact_match:.1%} of {n} answers (greedy)")
        if sampling:
            for i, text in enumerate(trainer.sample()):
                print(f"--- sample {i + 1} (seed {trainer.config.sample.seed}) ---")
                print(text)
    cleanup(trainer.dist)
    return EXIT_OK


def _generate(args: argparse.Namespace) -> int:
    from .generate import Overflow
    from .inference import SampleSettings, load, sample_text, stream_text, with_context
    from .settings import ValidationError, one_line

    loaded = load(args.checkpoint, device=args.device)
    with_context(loaded.model, args.context, args.rope_scaling, args.sliding_window)
    overflow: Overflow = "slide" if args.slide else "recompute"
    if args.int8 is not None:
        from .quantization import quantize

        quantize(loaded.model, args.int8)
    options = {"prompt": args.prompt, "max_new_tokens": args.max_new_tokens,
               "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
               "seed": args.seed, "num_samples": args.num_samples}
    given = {k: v for k, v in options.items() if v is not None}
    try:
        settings = SampleSettings.model_validate({**loaded.sample.model_dump(), **given})
    except ValidationError as e:
        field = str(e.errors()[0]["loc"][0])
        message = one_line(e, SampleSettings)
        if field in given:  # name the option as it was typed
            raise ValueError(message.replace(field, "--" + field.replace("_", "-"), 1)) from None
        raise ValueError(f"{loaded.checkpoint}: sample.{message}") from None
    if settings.num_samples == 1:  # stream: print each piece as soon as it is drawn
        drawn: list[int] = []
        started = time.perf_counter()
        print(settings.prompt, end="", flush=True)
        for piece in stream_text(loaded.model, loaded.tokenizer, settings,
                                 use_cache=not args.no_cache, on_token=drawn.append,
                                 overflow=overflow):
            print(piece, end="", flush=True)
        print()
        seconds = time.perf_counter() - started
        print(f"{len(drawn)} tokens in {seconds:.2f} s: {len(drawn) / max(seconds, 1e-9):,.1f} "
              f"tokens/s ({'full context each step' if args.no_cache else 'KV cache'}, "
              f"{_precision(loaded.model)}, {loaded.device})", file=sys.stderr)
        return 0
    for i, text in enumerate(sample_text(loaded.model, loaded.tokenizer, settings,
                                         overflow=overflow)):
        print(f"--- sample {i + 1} ---")
        print(text)
    return 0


def _precision(model: nn.Module) -> str:
    from .quantization import Int8Linear

    modes = {m.activations for m in model.modules() if isinstance(m, Int8Linear)}
    return f"int8 ({', '.join(sorted(modes))} activations)" if modes else "float"


def _quantize(args: argparse.Namespace) -> int:
    """Write ``args.out``: the checkpoint's model with int8 linear layers, and its tokenizer
    files. A bare model checkpoint: no optimizer or trainer state (it cannot be resumed)."""
    import shutil
    from pathlib import Path

    from .checkpoint import find_checkpoint, save_checkpoint
    from .inference import load
    from .quantization import linear_weight_bytes, quantize
    from .tokenizers import META_NAME, TOKENIZER_NAME

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory: choose a new one "
                              "(nothing is overwritten)")
    source = find_checkpoint(args.checkpoint)
    model = load(source).model
    before = linear_weight_bytes(model)
    save_checkpoint(quantize(model), out)
    for name in (META_NAME, TOKENIZER_NAME):
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    after = linear_weight_bytes(model)
    print(f"{out}: int8 linear layers from {source} ({before:,} -> {after:,} bytes of "
          f"linear weights, {after / before:.2f}x)")
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    """Run the server with uvicorn: settings from the environment, the arguments over them."""
    import uvicorn
    from pydantic import ValidationError

    from .checkpoint import find_checkpoint
    from .server.app import create_app
    from .server.settings import ENV_PREFIX, ServerSettings

    given = {"model": args.run_dir, "host": args.host, "port": args.port}
    try:
        settings = ServerSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        name = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if not name:  # a check across settings: its message names them
            raise ValueError(message) from None
        where = f"--{name}" if name in ("host", "port") and given.get(name) is not None \
            else f"{ENV_PREFIX}{name.upper()}"
        raise ValueError(f"{where}: {message}") from None
    find_checkpoint(settings.model)  # a missing model: one line now, not a failed start-up
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=settings.log_level)
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation.report import Options, evaluate

    for name in ("max_new_tokens", "max_chars"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    options = Options(
        prompts=tuple(args.prompts or ()), temperatures=tuple(args.temperatures or (0.5, 0.8, 1.0)),
        seeds=tuple(args.seeds or (0, 1)), max_new_tokens=args.max_new_tokens,
        context=args.context, stride=args.stride, max_chars=args.max_chars, device=args.device,
        rope_scaling=args.rope_scaling, sliding_window=args.sliding_window)
    report_path = evaluate(args.run, out=args.out, compare=args.compare,
                           compare_int8=args.compare_int8, text=args.text,
                           overwrite=args.overwrite, options=options)
    print(f"{report_path} (and {report_path.with_suffix('.html').name}, plots beside it)")
    return EXIT_OK
