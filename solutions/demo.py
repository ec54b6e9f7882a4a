"""A two-minute tour of the first components, with no download.

``python -m solutions.demo`` runs the worked solutions; ``python -m exercises.demo`` runs yours
(it works once the stubs of ``backprop`` and ``attention`` are filled in).

1. backprop: trains the NumPy MLP (hand-written forward and backward passes, SGD with momentum)
   on a generated two-spiral dataset and prints its loss and accuracy.
2. attention: computes causal attention for a short sentence, where each character's query and
   key is its one-hot vector, so a character attends to its own earlier occurrences; writes one
   head's weights as a PNG heatmap.

Example::

    python -m solutions.demo --out out/demo
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from reference.viz import plot_attention  # given: the library's heatmap writer

from .attention import attention_weights
from .backprop import make_spirals, train_mlp


def attention_example(text: str, sharpness: float = 2.0) -> torch.Tensor:
    """Causal attention weights (T, T) of ``text`` with one-hot characters as queries and keys.

    Example::

        >>> w = attention_example("abab")
        >>> [round(float(x), 3) for x in w[2]]  # the 2nd "a" splits between both "a"s
        [0.486, 0.029, 0.486, 0.0]
    """
    if not text:
        raise ValueError("text must be a non-empty string")
    alphabet = sorted(set(text))
    ids = torch.tensor([alphabet.index(c) for c in text])
    x = torch.nn.functional.one_hot(ids, len(alphabet)).float() * sharpness  # (T, V)
    return attention_weights(x, x, is_causal=True)  # (T, T)


def main(argv: list[str] | None = None) -> int:
    prog = f"python -m {__package__ or 'solutions'}.demo"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and weights")
    parser.add_argument("--steps", type=int, default=300, help="SGD steps for the MLP (>= 1)")
    parser.add_argument("--text", default="the cat sat on the mat", help="sentence to attend")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if not args.text:
        parser.error("--text must be a non-empty string")

    stubs = 0
    print("1/2 backprop: a NumPy MLP (2 -> 64 -> 3) on three generated spirals")
    try:
        X, y = make_spirals(seed=args.seed)
        result = train_mlp(X, y, steps=args.steps, seed=args.seed)
    except NotImplementedError as e:  # a learner's stub: say which, no traceback
        print(f"  skipped: {e}")
        stubs += 1
    else:
        for step in (0, len(result.losses) // 2, len(result.losses) - 1):
            print(f"  step {step:4d}  loss {result.losses[step]:.4f}")
        print(f"  training accuracy {result.accuracy:.1%} on {len(y)} points")

    print(f"2/2 attention: causal self-attention over {args.text!r}")
    try:
        weights = attention_example(args.text)
    except NotImplementedError as e:
        print(f"  skipped: {e}")
        return 1
    chars = list(args.text.replace(" ", "␣"))
    path = plot_attention(
        weights, args.out / "attention.png", chars, chars, title="one-hot causal attention"
    )
    print(f"  wrote {path}")
    return 1 if stubs else 0


if __name__ == "__main__":
    raise SystemExit(main())
