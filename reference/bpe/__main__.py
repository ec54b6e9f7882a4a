"""Command line: ``python -m reference.bpe {train,encode,inspect} ...``.

Examples::

    python -m reference.bpe train corpus.txt --vocab-size 10000 --special '<|endoftext|>' \\
        --processes 4 --out tok.json
    python -m reference.bpe encode --model tok.json --text "Hello world"
    python -m reference.bpe encode --tiktoken gpt2.tiktoken --input file.txt
    python -m reference.bpe inspect --model tok.json --limit 300
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..console import BAD_INPUT, EXIT_BAD_INPUT, debugging, one_line_warnings, report
from .pretokenize import DEFAULT_CHUNK_SIZE, iter_text_blocks
from .tokenizer import AllowedSpecial, Tokenizer
from .trainer import train_bpe_from_file
from .vocab import describe_vocab


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reference.bpe",
        description="Train, apply and inspect byte-level BPE tokenizers.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a tokenizer on a UTF-8 text file")
    train.add_argument("input", help="the training corpus (UTF-8 text)")
    train.add_argument("--vocab-size", type=int, required=True,
                       help="256 bytes + merges + special tokens")
    train.add_argument("--special", action="append", default=[], metavar="TOKEN",
                       help="a special token (repeatable), e.g. '<|endoftext|>'")
    train.add_argument("--processes", type=int, default=1, help="pre-tokenization processes")
    train.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                       help="bytes per pre-tokenization task")
    train.add_argument("--out", required=True, help="where to write the tokenizer (JSON)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    for name, text in (("encode", "print the token ids of a text, space-separated"),
                       ("inspect", "print the vocabulary: id, token, the merge that made it")):
        sub = commands.add_parser(name, help=text)
        source = sub.add_mutually_exclusive_group(required=True)
        source.add_argument("--model", help="a tokenizer file written by `train`")
        source.add_argument("--tiktoken", help="a tiktoken-format ranks file (gpt2.tiktoken)")
        sub.add_argument("--special", action="append", default=None, metavar="TOKEN",
                         help="special tokens for --tiktoken (default: <|endoftext|>)")
        if name == "encode":
            what = sub.add_mutually_exclusive_group(required=True)
            what.add_argument("--text", help="the text to encode")
            what.add_argument("--input", help="a UTF-8 file to encode (streamed)")
            sub.add_argument("--no-special", action="store_true",
                             help="encode special token strings as ordinary text")
        else:
            sub.add_argument("--limit", type=int, default=None, help="at most this many lines")

    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    with one_line_warnings():
        try:
            return _run(args)
        except BAD_INPUT as e:
            report(e, debug=debugging(args.debug))
            return EXIT_BAD_INPUT


def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        vocab, merges = train_bpe_from_file(
            args.input, args.vocab_size, args.special, processes=args.processes,
            chunk_size=args.chunk_size, progress=False if args.no_progress else None,
        )
        Tokenizer(vocab, merges, args.special).save(args.out)
        print(f"wrote {args.out}: {len(vocab)} tokens, {len(merges)} merges", file=sys.stderr)
        return 0
    if args.model:
        tok = Tokenizer.load(args.model)
    else:
        specials = ["<|endoftext|>"] if args.special is None else args.special
        tok = Tokenizer.from_tiktoken(args.tiktoken, specials)
    if args.command == "encode":
        allowed: AllowedSpecial = set() if args.no_special else "all"
        pieces = [args.text] if args.text is not None else iter_text_blocks(args.input)
        out = sys.stdout
        line: list[str] = []
        for i in tok.encode_iterable(pieces, allowed_special=allowed):
            line.append(str(i))
            if len(line) >= 4096:
                out.write(" ".join(line) + " ")
                line = []
        out.write(" ".join(line) + "\n")
        return 0
    for row in describe_vocab(tok.vocab, tok.merges, tok.special_tokens, limit=args.limit):
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
