"""Write the chapter notebooks 01-05 from the cells below, outputs stripped.

The notebooks are generated, so that their code is plain Python a diff can review::

    .venv/bin/python notebooks/make_notebooks.py          # (re)write notebooks/01_*..05_*.ipynb
    .venv/bin/python notebooks/make_notebooks.py --check  # exit 1 if one differs from this file

A cell is a ``(kind, source)`` pair: ``"md"`` for Markdown, ``"py"`` for code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
COLAB = "https://colab.research.google.com/github/<org>/llm-from-scratch/blob/main/notebooks"



def setup(names: str = "pick") -> str:
    """The first code cell: find notebooks/course.py from the repository root or from
    notebooks/, then import ``names`` from it."""
    return f"""\
# Find notebooks/course.py from the repository root or from notebooks/, then import it.
import sys
from pathlib import Path

here = Path.cwd() if (Path.cwd() / "course.py").is_file() else Path.cwd() / "notebooks"
sys.path.insert(0, str(here))
from course import {names}  # noqa: E402  (it also puts the repository root on sys.path)"""


def colab_cells(name: str) -> list[tuple[str, str]]:
    """The "open in Colab" badge and the cell that installs the project only on Colab."""
    badge = f"{COLAB}/{name}.ipynb"
    return [
        ("md", f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
               f"({badge})\n\nOn a laptop this chapter runs on the CPU as it is; on Colab (a free "
               "GPU) replace `<org>` in the link above and in the cell below with the GitHub "
               "owner of your copy of the project (see `notebooks/README.md`)."),
        ("py", """\
import os
import subprocess
import sys

if "google.colab" in sys.modules:  # on Colab only: fetch the project, install it, work in it
    ORG = "<org>"  # the GitHub owner of your copy of llm-from-scratch
    if not os.path.isdir("llm-from-scratch"):
        subprocess.run(["git", "clone", "-q", f"https://github.com/{ORG}/llm-from-scratch"],
                       check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "llm-from-scratch"],
                   check=True)
    os.chdir("llm-from-scratch/notebooks")"""),
    ]


def header(title: str, marker: str, intro: str, solution: str) -> tuple[str, str]:
    return ("md", f"""\
# {title}

{intro}

* Your stubs: `exercises/` (run `pytest exercises -m {marker}` to check them); where one is still
  a stub the notebook uses the library's version and says so in one line.
* The worked solution: `{solution}`; the chapter's page: `docs/components/{marker}.md`.""")


# --------------------------------------------------------------------------- 01 backprop

BACKPROP = [
    header("Chapter 1: backpropagation with a scalar autograd engine", "backprop",
           "A neural network is a function built from small operations; backpropagation is the "
           "chain rule applied to that graph, from the output back to the inputs. Here we use "
           "`Value`, a micrograd-style engine (your `exercises/backprop/autograd.py`), to train a "
           "tiny MLP and draw its loss curve.", "solutions/backprop/autograd.py"),
    ("py", setup()),
    ("md", """\
## The chain rule on a graph

Each operation knows its *local* derivative. For $f = a b + c^2$:

$$\\frac{\\partial f}{\\partial a} = b, \\qquad \\frac{\\partial f}{\\partial b} = a, \\qquad
\\frac{\\partial f}{\\partial c} = 2c .$$

`backward()` seeds $\\partial f / \\partial f = 1$ and visits the nodes in reverse topological
order; each node's `_backward` **adds** its share to its inputs' `grad` (a value used twice gets
two shares)."""),
    ("py", """\
import solutions.backprop as worked

Value = pick("backprop", "Value", worked.Value)

a, b, c = Value(2.0), Value(-3.0), Value(4.0)
f = a * b + c**2
f.backward()
print(f.data, a.grad, b.grad, c.grad)  # 10.0 -3.0 2.0 8.0"""),
    ("md", "PyTorch's autograd is an oracle we did not write: the same graph, the same gradients."),
    ("py", """\
import torch

ta, tb, tc = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (2.0, -3.0, 4.0))
(ta * tb + tc**2).backward()
assert (a.grad, b.grad, c.grad) == (ta.grad.item(), tb.grad.item(), tc.grad.item())
print("same gradients as torch.autograd")"""),
    ("md", """\
## A tiny MLP made of `Value`s

Two inputs, a hidden layer of 8 `tanh` units, one output: $\\hat y = w_2 \\cdot \\tanh(W_1 x +
b_1) + b_2$. The data: points on two interleaved spiral arms (`make_spirals`, given code), label
$\\pm 1$; the loss is the mean squared error. Every step: forward, `backward()`, then
$p \\leftarrow p - \\eta\\, \\partial L / \\partial p$ and the gradients back to zero."""),
    ("py", """\
import random

random.seed(0)
X, y = worked.make_spirals(n_per_class=20, n_classes=2, noise=0.1, seed=0)
targets = [1.0 if label == 1 else -1.0 for label in y]

H = 8
W1 = [[Value(random.uniform(-1, 1)) for _ in range(2)] for _ in range(H)]
b1 = [Value(0.0) for _ in range(H)]
w2 = [Value(random.uniform(-1, 1)) for _ in range(H)]
b2 = Value(0.0)
params = [p for row in W1 for p in row] + b1 + w2 + [b2]


def forward(x):
    hidden = [
        sum((w * xi for w, xi in zip(row, x, strict=True)), bias).tanh()
        for row, bias in zip(W1, b1, strict=True)
    ]
    return sum((w * h for w, h in zip(w2, hidden, strict=True)), b2)


losses = []
for _ in range(60):
    errors = [(forward(x) - t) ** 2 for x, t in zip(X.tolist(), targets, strict=True)]
    loss = sum(errors) * (1 / len(errors))
    for p in params:
        p.grad = 0.0
    loss.backward()
    for p in params:
        p.data -= 0.1 * p.grad
    losses.append(loss.data)
print(f"{len(params)} parameters; loss {losses[0]:.3f} -> {losses[-1]:.3f}")"""),
    ("py", """\
%matplotlib inline
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(losses)
ax.set_xlabel("step")
ax.set_ylabel("mean squared error")
ax.set_title("the tiny MLP learns")
plt.show()"""),
    ("md", """\
## What to take away

* A gradient is the sum over every path from the output to the parameter (`+=`, never `=`).
* Reverse topological order guarantees a node's `grad` is complete before it is propagated.
* The NumPy layers of this chapter (`layers.py`, `mlp.py`) do the same on whole arrays at once:
  `pytest exercises -m backprop` checks both against PyTorch."""),
]

# --------------------------------------------------------------------------- 02 attention

ATTENTION = [
    header("Chapter 2: attention", "attention",
           "Attention lets every position of a sequence read from the others, weighting each "
           "by how well its *key* matches the reader's *query*. We build softmax, scaled "
           "dot-product attention and the causal mask (your `exercises/attention.py`), check "
           "them against PyTorch, and look at the weights on a short sentence.",
           "solutions/attention.py"),
    ("py", setup()),
    ("md", """\
## Softmax, stably

$$\\operatorname{softmax}(x)_i = \\frac{e^{x_i - m}}{\\sum_j e^{x_j - m}}, \\qquad m = \\max_j x_j$$

Subtracting the maximum changes nothing mathematically and keeps $e^{x}$ from overflowing."""),
    ("py", """\
import torch

import reference.attention as library

softmax = pick("attention", "softmax", library.softmax)
attention_weights = pick("attention", "attention_weights", library.attention_weights)
sdpa = pick("attention", "scaled_dot_product_attention", library.scaled_dot_product_attention)

x = torch.tensor([1000.0, 1001.0, 1002.0])  # naive exp() overflows to inf here
print(softmax(x))
torch.testing.assert_close(softmax(x), torch.softmax(x, dim=-1))"""),
    ("md", """\
## Scaled dot-product attention

$$\\operatorname{Attention}(Q, K, V) = \\operatorname{softmax}\\!\\left(\\frac{Q K^\\top}
{\\sqrt{d}}\\right) V$$

Dividing by $\\sqrt d$ keeps the scores' variance near 1 whatever the head size, so the softmax
does not saturate. A **causal mask** sets the score of every key after the query to $-\\infty$:
position $t$ sees positions $\\le t$ only, which is what lets a language model train on all
positions of a text at once."""),
    ("py", """\
import torch.nn.functional as F

g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))  # (B, nh, T, hs)
ours = sdpa(q, k, v, is_causal=True)
theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True)
torch.testing.assert_close(ours, theirs)  # fp32 defaults: rtol 1.3e-6, atol 1e-5
print("matches torch's scaled_dot_product_attention:", tuple(ours.shape))"""),
    ("md", """\
## The weights on a sentence

A toy: each word gets a fixed random embedding (the same word, the same vector), and one
head's query and key projections. Untrained, the pattern is arbitrary; what the picture shows is
the *shape* of causal attention: a lower triangle, each row summing to 1, and the two "the"s
scoring alike against every key."""),
    ("py", """\
%matplotlib inline
import matplotlib.pyplot as plt

words = ["the", "cat", "sat", "on", "the", "mat", "because", "it", "was", "warm"]
vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
g = torch.Generator().manual_seed(1)
emb = torch.randn(len(vocab), 16, generator=g)
Wq, Wk = torch.randn(16, 16, generator=g) / 4, torch.randn(16, 16, generator=g) / 4
x = emb[torch.tensor([vocab[w] for w in words])]  # (T, C)
weights = attention_weights(x @ Wq, x @ Wk, is_causal=True)  # (T, T)
print("rows sum to 1:", torch.allclose(weights.sum(-1), torch.ones(len(words))))

fig, ax = plt.subplots(figsize=(5, 4.5))
ax.imshow(weights, cmap="Blues")
ax.set_xticks(range(len(words)), words, rotation=60)
ax.set_yticks(range(len(words)), words)
ax.set_xlabel("key (attended to)")
ax.set_ylabel("query (reading)")
ax.set_title("causal attention weights")
plt.show()"""),
    ("md", """\
## Many heads

`multi_head_attention` splits the channels into `n_head` heads of size `hs = C / n_head`
(`(B, T, C) -> (B, nh, T, hs)`), attends in each, and merges them back: several patterns at the
price of one. Next: `pytest exercises -m attention`, then chapter 3 puts it in a GPT."""),
    ("py", """\
split_heads = pick("attention", "split_heads", library.split_heads)
merge_heads = pick("attention", "merge_heads", library.merge_heads)
x = torch.randn(2, 6, 32)  # (B, T, C)
heads = split_heads(x, 4)  # (B, nh, T, hs)
print(tuple(x.shape), "->", tuple(heads.shape), "->", tuple(merge_heads(heads).shape))
assert torch.equal(merge_heads(heads), x)"""),
]

# --------------------------------------------------------------------------- 03 gpt

GPT = [
    header("Chapter 3: the GPT model", "gpt",
           "A GPT is a stack of transformer blocks between a token embedding and a tied "
           "language-model head. We follow the shapes through one forward pass (your "
           "`exercises/gpt/`), then sample from a model before and after 100 training steps.",
           "solutions/gpt/"),
    ("py", setup()),
    ("md", """\
## The forward pass, shape by shape

$$x_0 = W_{te}[\\text{idx}] + W_{pe}[0{:}T] \\quad (B, T, C)$$
$$x_{i+1} = x_i' + \\operatorname{MLP}(\\operatorname{LN}(x_i')), \\quad
x_i' = x_i + \\operatorname{Attn}(\\operatorname{LN}(x_i))$$
$$\\text{logits} = \\operatorname{LN}(x_L)\\, W_{te}^\\top \\quad (B, T, V)$$

The weights are a dict with GPT-2's names (`transformer.h.0.attn.c_attn.weight`, ...), so
loading GPT-2 itself is a key-to-key copy."""),
    ("py", """\
import torch

import reference.gpt as library
from reference.model import GPTConfig

init_params = pick("gpt", "init_params", library.init_params)
gpt_forward = pick("gpt", "gpt_forward", library.gpt_forward)
generate = pick("gpt", "generate", library.generate)

from reference.trainer.corpora import builtin_corpus  # noqa: E402

text = builtin_corpus().text()[:50_000]  # the Python reference's help topics: no download
chars = sorted(set(text))
stoi = {ch: i for i, ch in enumerate(chars)}
data = torch.tensor([stoi[ch] for ch in text])
config = GPTConfig(block_size=32, vocab_size=len(chars), n_layer=2, n_head=4, n_embd=64)
params = init_params(config, seed=0)
for name, w in list(params.items())[:6]:
    print(f"{name:40} {tuple(w.shape)}")
print(f"... {len(params)} tensors, {sum(w.numel() for w in params.values()):,} numbers")"""),
    ("py", """\
idx = data[:64].view(2, 32)  # (B, T)
targets = data[1:65].view(2, 32)  # the next character at every position
logits, loss = gpt_forward(idx, params, config, targets)
print("idx", tuple(idx.shape), "-> logits", tuple(logits.shape))
print(f"loss {loss.item():.3f}; a uniform guess over {len(chars)} chars: "
      f"{torch.log(torch.tensor(float(len(chars)))).item():.3f}")"""),
    ("md", """\
## Sampling, untrained

Generation appends one token at a time: run the model on the last `block_size` tokens, take the
last position's logits, divide by the temperature, sample. Untrained, every character is about
equally likely."""),
    ("py", """\
def sample(params, n=120, seed=0):
    prompt = torch.tensor([[stoi["T"]]])
    g = torch.Generator().manual_seed(seed)
    out = generate(prompt, params, config, n, temperature=0.8, generator=g)
    return "".join(chars[i] for i in out[0].tolist())


print(sample(params))"""),
    ("md", """\
## 100 steps of training

The loss is the cross-entropy of the next character at every position; AdamW on the weight
dict directly (the functional model has no `nn.Module` to hold them)."""),
    ("py", """\
torch.manual_seed(0)
trained = {k: v.clone().requires_grad_() for k, v in params.items()}
opt = torch.optim.AdamW(trained.values(), lr=3e-3)
g = torch.Generator().manual_seed(0)
losses = []
for _ in range(100):
    starts = torch.randint(len(data) - config.block_size - 1, (16,), generator=g)
    xb = torch.stack([data[s : s + config.block_size] for s in starts])
    yb = torch.stack([data[s + 1 : s + config.block_size + 1] for s in starts])
    _, loss = gpt_forward(xb, trained, config, yb)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
print(f"loss {losses[0]:.2f} -> {losses[-1]:.2f}")"""),
    ("py", """\
%matplotlib inline
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(losses)
ax.set_xlabel("step")
ax.set_ylabel("cross-entropy (nats)")
ax.set_title("100 steps of a 2-layer GPT")
plt.show()
print(sample({k: v.detach() for k, v in trained.items()}))"""),
    ("md", """\
After 100 steps the model has learnt which characters are common and that spaces separate
words; chapter 5 trains for longer with the project's trainer. Check your model with
`pytest exercises -m gpt`."""),
]

# --------------------------------------------------------------------------- 04 bpe

BPE = [
    header("Chapter 4: byte-pair encoding", "bpe",
           "A tokenizer turns text into ids. Byte-level BPE starts from the 256 bytes and "
           "repeatedly merges the most frequent adjacent pair into a new token; the list of "
           "merges is the tokenizer. We do a few merges by hand (your `exercises/bpe/`), then "
           "train the library's BPE on Tiny Shakespeare and compare its compression with "
           "GPT-2's.", "solutions/bpe/"),
    ("py", setup("data_dir, pick")),
    ("md", """\
## Merges by hand

1. count every adjacent pair of ids (overlapping: `aaa` holds `(a, a)` twice);
2. replace each occurrence of the most frequent pair by a new id, $256 + k$ for merge $k$;
3. repeat."""),
    ("py", """\
import reference.bpe as library

get_pair_counts = pick("bpe", "get_pair_counts", library.get_pair_counts)
merge = pick("bpe", "merge", library.merge)

ids = list(b"the cat in the hat ate the hat")
vocab = {i: bytes([i]) for i in range(256)}
for k in range(4):
    counts = get_pair_counts(ids)
    pair = max(counts, key=lambda p: (counts[p], p))
    new_id = 256 + k
    vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
    ids = merge(ids, pair, new_id)
    print(f"merge {k}: {vocab[pair[0]]!r} + {vocab[pair[1]]!r} (x{counts[pair]}) -> {new_id}; "
          f"{len(ids)} tokens")
print([vocab[i].decode() for i in ids])"""),
    ("md", """\
(The trainer of this chapter, `train_bpe`, also cuts the text into GPT-2's pre-tokens first, so
that no merge crosses a word boundary, and breaks ties by the greatest pair of bytes.)

## The library's BPE on Tiny Shakespeare

Trained on the first 100 KB (from `$LLMFS_DATA`; the built-in corpus if it is missing), 512
tokens in all: 256 bytes and 256 merges."""),
    ("py", """\
import time

from reference.trainer.corpora import builtin_corpus

path = data_dir() / "tinyshakespeare" / "input.txt"
if path.is_file():
    corpus = path.read_text(encoding="utf-8")
else:
    print(f"note: {path} is missing (set LLMFS_DATA); using the built-in corpus instead")
    corpus = builtin_corpus().text()
train_text, held_out = corpus[:100_000], corpus[100_000:120_000]
start = time.perf_counter()
vocab, merges = library.train_bpe(train_text, 512, progress=False)
print(f"{len(merges)} merges in {time.perf_counter() - start:.1f} s; the first 20:")
print([library.render_token(a + b) for a, b in merges[:20]])"""),
    ("md", """\
## Compression: bytes per token

More bytes per token means shorter sequences for the same text, so more text in the model's
context. Measured on 20 KB that the tokenizer did not see, against GPT-2's 50,257-token
vocabulary (its ranks read from `$LLMFS_DATA/gpt2/gpt2.tiktoken`, exactly as tiktoken encodes)."""),
    ("py", """\
%matplotlib inline
import matplotlib.pyplot as plt

n_bytes = len(held_out.encode("utf-8"))
ours = library.Tokenizer(vocab, merges)
ratios = {"bytes (256)": 1.0, "ours (512)": n_bytes / len(ours.encode(held_out))}
ranks = data_dir() / "gpt2" / "gpt2.tiktoken"
if ranks.is_file():
    gpt2 = library.Tokenizer.from_tiktoken(ranks)
    ratios["GPT-2 (50,257)"] = n_bytes / len(gpt2.encode(held_out))
else:
    print(f"note: {ranks} is missing (set LLMFS_DATA): no GPT-2 bar")
for name, r in ratios.items():
    print(f"{name:16} {r:.2f} bytes/token")
assert ours.decode(ours.encode(held_out)) == held_out  # lossless

fig, ax = plt.subplots(figsize=(5, 3))
ax.bar(list(ratios), list(ratios.values()), color=["grey", "tab:blue", "tab:orange"][: len(ratios)])
ax.set_ylabel("bytes per token (higher: shorter)")
ax.set_title("compression on held-out text")
plt.show()"""),
    ("md", """\
256 merges trained on Shakespeare already halve the length; GPT-2's 50,000 merges trained on
web text do better still, even on Shakespeare. Check your tokenizer (exact against GPT-2's ids)
with `pytest exercises -m bpe`."""),
]

# --------------------------------------------------------------------------- 05 training

TRAINING = [
    header("Chapter 5: training", "trainer",
           "The trainer feeds random windows of the corpus to the model, and after each step "
           "lets AdamW move the weights by a learning rate that warms up, then decays along a "
           "cosine. We look at the pieces (your `exercises/trainer/`), then run the project's "
           "trainer for 200 steps on the built-in corpus and read its metrics log.",
           "solutions/trainer/"),
    *colab_cells("05_training"),
    ("py", setup()),
    ("md", """\
## Batches: windows and their next tokens

`x[b] = data[i : i + T]`, `y[b] = data[i + 1 : i + T + 1]`: every position of a window is a
training example for the next token."""),
    ("py", """\
import torch

import reference.trainer as library

get_batch = pick("trainer", "get_batch", library.get_batch)
cosine_lr = pick("trainer", "cosine_lr", library.cosine_lr)

data = torch.arange(100)
x, y = get_batch(data, block_size=8, batch_size=2, generator=torch.Generator().manual_seed(0))
print(x, y, sep="\\n")"""),
    ("md", """\
## The schedule

$$\\eta_t = \\begin{cases} \\eta_{max}\\,\\frac{t+1}{W} & t < W \\\\
\\eta_{min} + \\tfrac12\\left(1 + \\cos \\pi\\, \\frac{t - W}{D - W}\\right)
(\\eta_{max} - \\eta_{min}) & W \\le t \\le D \\\\ \\eta_{min} & t > D \\end{cases}$$"""),
    ("py", """\
%matplotlib inline
import matplotlib.pyplot as plt

steps = range(220)
lrs = [cosine_lr(s, max_lr=3e-3, min_lr=3e-4, warmup_steps=20, decay_steps=200) for s in steps]
fig, ax = plt.subplots(figsize=(5, 2.5))
ax.plot(steps, lrs)
ax.set_xlabel("step")
ax.set_ylabel("learning rate")
ax.set_title("warm-up, cosine, floor")
plt.show()"""),
    ("md", """\
## 200 steps of the project's trainer

The same `Trainer` as `python -m reference train`, with a smaller model so that it takes seconds
on a CPU: it tokenizes the corpus by character, trains, evaluates every 50 steps and appends
every record to `metrics.jsonl` in its run directory (a temporary one here)."""),
    ("py", """\
import tempfile
from pathlib import Path

from reference.trainer.config import load_config
from reference.trainer.loop import Trainer

out_dir = Path(tempfile.mkdtemp()) / "run"
config = load_config(overrides=[
    f"train.out_dir={out_dir}", "train.device=cpu", "train.max_steps=200",
    "train.warmup_steps=20", "train.batch_size=16", "train.eval_interval=50",
    "train.eval_steps=4", "train.log_interval=5", "train.progress=false",
    "train.tensorboard=false", "train.plot=false",
    "model.n_layer=2", "model.n_head=4", "model.n_embd=64", "model.block_size=64",
])
trainer = Trainer(config, progress=False)
result = trainer.fit()
print(f"step {result.step}: train {result.train_loss:.3f}, val {result.val_loss:.3f} "
      f"({result.seconds:.0f} s, {result.tokens_per_s:,.0f} tokens/s)")"""),
    ("py", """\
from reference.trainer.monitor import read_metrics

records = read_metrics(out_dir / "metrics.jsonl")
train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
val = [(r["step"], r["val_loss"]) for r in records if r["kind"] == "eval"]
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(*zip(*train, strict=True), label="train (one batch)")
ax.plot(*zip(*val, strict=True), "o-", label="validation")
ax.set_xlabel("step")
ax.set_ylabel("cross-entropy (nats)")
ax.legend()
ax.set_title("metrics.jsonl")
plt.show()"""),
    ("py", """\
print(trainer.sample(max_new_tokens=200, seed=0)[0])"""),
    ("md", """\
Two hundred steps give text that looks like the corpus from a distance; the main job
(`python -m reference train`, 1000 steps of a 4-layer model) gets much closer, and a GPU
(Colab) makes far larger runs practical. Check your pieces with `pytest exercises -m trainer`."""),
]

NOTEBOOKS = {
    "01_backprop": BACKPROP,
    "02_attention": ATTENTION,
    "03_gpt": GPT,
    "04_bpe": BPE,
    "05_training": TRAINING,
}


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, source) in enumerate(cells):
        cell = (nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell)(
            source
        )
        cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating changes nothing
        nb.cells.append(cell)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a notebook differs")
    args = parser.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        path = HERE / f"{name}.ipynb"
        text = nbformat.writes(build(cells)) + "\n"
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python notebooks/make_notebooks.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
