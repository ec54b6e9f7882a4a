"""The cells of the chapter notebooks 06-10, one list of ``(kind, source)`` per notebook.

``python notebooks/06_10_make.py`` writes them as ``notebooks/NN_<chapter>.ipynb``. Each runs
top to bottom on a CPU in well under a minute: tiny models, few steps, no network.
"""

from __future__ import annotations

COLAB = """
[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/<org>/llm-from-scratch/blob/main/notebooks/{name}.ipynb)

On a laptop this notebook runs as it is. To run it on Colab's GPU, open the badge's link with
`<org>` replaced by the GitHub owner of your copy of the project (the README's course map says
how); the next cell then clones and installs the project, and does nothing anywhere else.
"""

COLAB_SETUP = """
import os
import subprocess
import sys

if "google.colab" in sys.modules:  # on Colab only: fetch the project, install it, work in it
    ORG = "<org>"  # the GitHub owner of your copy of the project
    if not os.path.isdir("llm-from-scratch"):  # a second run of this cell keeps the clone
        url = f"https://github.com/{ORG}/llm-from-scratch"
        subprocess.run(["git", "clone", "-q", url], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e",
                    "llm-from-scratch[serve]"], check=True)
    os.chdir("llm-from-scratch/notebooks")
"""

FIND_COURSE = """
# Find notebooks/course.py from the repository root or from notebooks/ (it then puts the
# repository root on sys.path, so `reference` and `exercises` import from either place).
import sys
from pathlib import Path

here = Path.cwd() if (Path.cwd() / "course.py").is_file() else Path.cwd() / "notebooks"
sys.path.insert(0, str(here))
"""

# A tiny character-level GPT trained for a few seconds on the built-in corpus (the Python
# Language Reference's help topics, shipped with Python): the base model of chapters 6 and 8.
TINY_BASE = """
import time

import torch

from reference.model import GPT, GPTConfig
from reference.tokenizers import CharTokenizer
from reference.trainer.corpora import builtin_corpus

torch.manual_seed(0)
text = builtin_corpus().text()
base_tok = CharTokenizer.from_text(text)
data = torch.tensor(base_tok.encode(text))  # (N,) the whole corpus as token ids
n_val = len(data) // 10
train_data, val_data = data[:-n_val], data[-n_val:]  # the last 10% held out
config = GPTConfig(block_size=32, vocab_size=base_tok.vocab_size, n_layer=2, n_head=4,
                   n_embd=64)
base = GPT(config)
optimizer = torch.optim.AdamW(base.parameters(), lr=3e-3)
losses, start = [], time.perf_counter()
for _ in range({steps}):
    ix = torch.randint(len(train_data) - config.block_size - 1, (32,)).tolist()
    x = torch.stack([train_data[i : i + config.block_size] for i in ix])  # (B, T)
    y = torch.stack([train_data[i + 1 : i + config.block_size + 1] for i in ix])  # next tokens
    _, loss = base(x, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
base.eval()
print(f"{{base.num_parameters():,}} parameters, {{len(losses)}} steps in "
      f"{{time.perf_counter() - start:.1f}} s, last loss {{losses[-1]:.3f}}")
"""

# ------------------------------------------------------------------------ 06: fine-tuning

FINETUNING = [
    ("md", """
# Chapter 6: fine-tuning (the chat template, the loss mask, LoRA)

A base model continues text. To make it *answer*, it is fine-tuned on conversations written
in one fixed chat format, with the loss on the assistant's tokens only; LoRA does it by
training a small low-rank update beside each frozen weight.

- Exercises: `pytest exercises -m finetune` (`exercises/finetune.py`: the chat template, the
  loss mask, DPO) and `pytest exercises -m lora` (`exercises/lora.py`).
- Docs: `docs/components/finetune.md`, `docs/components/lora.md` and the guide
  `docs/guides/finetuning.md`.
- Where you have filled a stub, the cells below run yours; where not, the library's, and a
  line says which.
"""),
    ("code", FIND_COURSE),
    ("code", """
from course import pick  # your code where you wrote it, the library's where not

from reference import chat, finetune, lora

ChatTokenizer = pick("finetune", "ChatTokenizer", chat.ChatTokenizer)
render = pick("finetune", "render", chat.render)
encode_chat = pick("finetune", "encode_chat", chat.encode_chat)
sft_targets = pick("finetune", "sft_targets", finetune.sft_targets)
sft_batch = pick("finetune", "sft_batch", finetune.sft_batch)
apply_lora = pick("lora", "apply_lora", lora.apply_lora)
merge_lora = pick("lora", "merge_lora", lora.merge_lora)
"""),
    ("md", """
## 1. The chat template

Every turn is `<|role|>content<|end|>`, nothing between the turns. At inference the prompt is
the conversation so far followed by `<|assistant|>`: the model writes the answer and then
`<|end|>`, where generation stops. The four special tokens get ids after the base
tokenizer's last one, so no existing id changes meaning.
"""),
    ("code", """
from reference.tokenizers import CharTokenizer

conversation = [{"role": "system", "content": "Be terse."},
                {"role": "user", "content": "reverse: cat"},
                {"role": "assistant", "content": "tac"}]
print(render(conversation))
print(render(conversation[:-1], add_generation_prompt=True))  # the prompt at inference

toy = ChatTokenizer(CharTokenizer("abcdefghijklmnopqrstuvwxyz :.BT"))
ids, learn = encode_chat(toy, conversation)
print(len(ids), "ids; the specials are", toy.special_ids)
"""),
    ("md", """
## 2. The loss mask

Training reads `x = ids[:-1]` and predicts `y[t] = ids[t+1]`, but only where the next token is
the assistant's (its content and its closing `<|end|>`: the model learns to answer *and to
stop*). Elsewhere the target is `-1`, which `F.cross_entropy(ignore_index=-1)` skips:

$$\\mathcal{L} = -\\frac{1}{|M|} \\sum_{t \\in M} \\log p_\\theta(y_t \\mid x_{\\le t}),
\\qquad M = \\{t : \\text{learn}[t+1]\\}$$

Below, each token of the conversation; the green ones carry loss.
"""),
    ("code", """
import matplotlib.pyplot as plt

x, y = sft_targets(ids, learn)
labels = [toy.decode([i]) for i in ids]
fig, ax = plt.subplots(figsize=(12, 1.6))
ax.imshow([learn], cmap="RdYlGn", vmin=-0.3, vmax=1.3, aspect="auto")
for t, label in enumerate(labels):
    ax.text(t, 0, label.replace("<|", "").replace("|>", ""), ha="center", va="center",
            fontsize=7, rotation=90)
ax.set_yticks([])
ax.set_xlabel("position in the conversation (green: the model is trained to predict it)")
plt.show()
print("targets:", y)
"""),
    ("md", """
Examples of different lengths share a batch by **right** padding: with causal attention a
real token never attends to the padding after it, and the padding's targets are `-1`.
"""),
    ("code", """
other = encode_chat(toy, [{"role": "user", "content": "reverse: to"},
                          {"role": "assistant", "content": "ot"}])
xb, yb = sft_batch([(ids, learn), other], pad_id=0)
print(xb.shape, yb.shape)
print(yb[1].tolist())
"""),
    ("md", """
## 3. A base model

A tiny character-level GPT trained for a few seconds on the built-in corpus: it knows the
letters, but nothing of conversations or of reversing words.
"""),
    ("code", TINY_BASE.format(steps=150)),
    ("md", """
## 4. LoRA: a low-rank update beside each frozen weight

Each targeted linear layer `W` (out × in) stays frozen; LoRA learns `A` (r × in) and `B`
(out × r), `B` starting at zero, and computes

$$h = W x + \\frac{\\alpha}{r} B A x .$$

With r ≪ in, out, the update has `r (in + out)` parameters instead of `in · out`. The chat
tokens are new, so their four embedding rows train too (and only those rows).
"""),
    ("code", """
from reference.tasks import reverse
from reference.trainer.sft import exact_match

chat_tok = chat.ChatTokenizer(base_tok)  # the base's characters + the 4 chat tokens
conversations = reverse(560, seed=0, min_len=3, max_len=4)
train, held_out = conversations[:500], conversations[500:]
print(render(train[0]))

# Grow the vocabulary by the 4 chat tokens: the old rows stay, the new ones start small.
model = GPT(config.model_copy(update={"vocab_size": chat_tok.vocab_size}))
state = base.state_dict()
old_rows = state.pop("transformer.wte.weight")
state.pop("lm_head.weight", None)  # tied to the embedding
model.load_state_dict(state, strict=False)
with torch.no_grad():
    new_rows = 0.02 * torch.randn(4, config.n_embd)
    model.transformer.wte.weight.copy_(torch.cat([old_rows, new_rows]))
before = exact_match(model.eval(), chat_tok, held_out)
print(f"exact match before fine-tuning: {before:.0%} of {len(held_out)} held-out words")
"""),
    ("code", """
wrapped = apply_lora(model, r=16, alpha=32)  # freezes everything else
wte = model.transformer.wte.weight.requires_grad_(True)
only_new = torch.zeros(wte.size(0), 1)
only_new[base_tok.vocab_size :] = 1.0
wte.register_hook(lambda grad: grad * only_new)  # train the chat tokens' rows alone
trainable, total = lora.trainable_parameters(model)
print(f"LoRA on {len(wrapped)} layers: {trainable:,} of {total:,} parameters train "
      f"({trainable / total:.0%})")

examples = [encode_chat(chat_tok, c) for c in train]
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3,
                              weight_decay=0.0)
model.train()
sft_losses, start = [], time.perf_counter()
for _ in range(700):
    picks = torch.randint(len(examples), (32,)).tolist()
    xb, yb = sft_batch([examples[i] for i in picks], pad_id=0)
    _, loss = model(xb, yb)  # the mean over the positions whose target is not -1
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    sft_losses.append(loss.item())
print(f"{len(sft_losses)} steps in {time.perf_counter() - start:.1f} s")
plt.figure(figsize=(6, 3))
plt.plot(sft_losses)
plt.xlabel("step")
plt.ylabel("loss on the assistant's tokens")
plt.show()
"""),
    ("code", """
from reference.generate import generate_batch

merge_lora(model)  # fold s·BA into W: inference costs what the base costs
model.eval()
after = exact_match(model, chat_tok, held_out)
print(f"exact match: {before:.0%} before, {after:.0%} after a {len(sft_losses)}-step LoRA run")
for c in held_out[:6]:
    prompt = chat_tok.encode(render(c[:-1], add_generation_prompt=True))
    out = generate_batch(model, [prompt], 8, temperature=0.0, eos_id=chat_tok.eot_id)[0]
    print(f"{c[0]['content']!r:>18} -> {chat_tok.decode(out)!r}")
"""),
    ("md", """
A longer run on a bigger base gets every word right: the README's `finetune` command takes
the main job's model from 0% to 100% on 200 held-out reversals in about five minutes on two
CPU cores. Next: `pytest exercises -m lora` and `pytest exercises -m finetune`.
"""),
]


# ------------------------------------------------------------------------ 07: inference

INFERENCE = [
    ("md", """
# Chapter 7: inference (the KV cache, int8 weights, continuous batching)

Three ideas make a trained model cheap to run: keep the keys and values of the tokens already
seen (the **KV cache**) instead of recomputing them, store the weights in **int8** with one
scale per output channel, and decode many requests as one **continuous batch** that requests
join and leave between steps.

- Exercises: `pytest exercises -m kvcache`, `pytest exercises -m quantization`,
  `pytest exercises -m batching`.
- Docs: `docs/components/kvcache.md`, `docs/components/quantization.md`,
  `docs/components/batching.md`.
"""),
    ("md", COLAB.format(name="07_inference")),
    ("code", COLAB_SETUP),
    ("code", FIND_COURSE),
    ("code", """
import time

import matplotlib.pyplot as plt
import torch
from course import pick

from reference import batching, kvcache, quantization
from reference.gpt import init_params, model_with
from reference.model import GPTConfig

cached_attention = pick("kvcache", "cached_attention", kvcache.cached_attention)
generate_cached = pick("kvcache", "generate_cached", kvcache.generate_cached)
quantize_per_channel = pick("quantization", "quantize_per_channel",
                            quantization.quantize_per_channel)
dequantize = pick("quantization", "dequantize", quantization.dequantize)
quantized_linear = pick("quantization", "quantized_linear", quantization.quantized_linear)
admit = pick("batching", "admit", batching.admit)
decode_step = pick("batching", "decode_step", batching.decode_step)
retire = pick("batching", "retire", batching.retire)

torch.manual_seed(0)
config = GPTConfig(block_size=256, vocab_size=65, n_layer=4, n_head=4, n_embd=128)
params = init_params(config, seed=0)  # random weights: inference does not care what they mean
model = model_with(params, config)  # the same weights as a GPT module, in eval mode
"""),
    ("md", """
## 1. The KV cache

At decode step t the new token's query attends to the keys and values of *every* earlier
token. Those never change (causal attention), so they are kept: each step computes q, k, v
for the one new token, writes k and v at its slot, and attends over the slots 0..t:

$$\\text{out}_t = \\text{softmax}\\Big(\\frac{q_t K_{\\le t}^\\top}{\\sqrt{d}}\\Big) V_{\\le t}$$

The mask over the cache is bottom-right aligned: the query at slot p sees the slots ≤ p,
whatever the later slots hold.
"""),
    ("code", """
hs, S = 8, 6
q = torch.randn(1, 1, 3, hs)  # 3 queries, at slots 3, 4, 5 (a block after a 3-token prefix)
k_cache, v_cache = torch.randn(1, 1, S, hs), torch.randn(1, 1, S, hs)
input_pos = torch.tensor([[3, 4, 5]])
out = cached_attention(q, k_cache, v_cache, input_pos)
scores = (q @ k_cache.transpose(-2, -1) / hs**0.5)[0, 0]  # (3, S)
visible = torch.arange(S)[None, :] <= input_pos[0][:, None]  # (3, S)
weights = scores.masked_fill(~visible, float("-inf")).softmax(-1)
print("matches softmax(qKᵀ/√d)V:", torch.allclose(out[0, 0], weights @ v_cache[0, 0], atol=1e-6))
plt.imshow(weights, cmap="viridis")
plt.xlabel("cache slot (slot 5 is hidden from the queries at slots 3 and 4)")
plt.yticks(range(3), ["slot 3", "slot 4", "slot 5"])
plt.ylabel("query")
plt.title("attention weights over the cache")
plt.colorbar()
plt.show()
"""),
    ("md", """
The cache holds, per layer, keys and values of shape (B, n_head, T, head_size): it grows by
`2 · n_layer · n_embd` numbers per token and sequence. Below, a decode of 200 tokens, one
forward pass of **one** token per step.
"""),
    ("code", """
cache = model.new_cache(batch_size=1)  # preallocated for block_size slots
idx = torch.zeros(1, 1, dtype=torch.long)
used = []
with torch.no_grad():
    for t in range(200):
        cache.length = t + 1  # attention reads only the slots in use
        logits, _ = model(idx, cache=cache, input_pos=torch.tensor([[t]]))
        idx = logits[:, -1].argmax(-1, keepdim=True)  # (1, 1) greedy
        used.append(2 * config.n_layer * config.n_embd * (t + 1) * 4)  # bytes of k and v
per_token = 2 * config.n_layer * config.n_embd * 4
allocated = sum(k.nbytes + v.nbytes for k, v in zip(cache.k, cache.v, strict=True))
plt.figure(figsize=(6, 3))
plt.plot([u / 1024 for u in used], label="keys and values written")
plt.axhline(allocated / 1024, color="gray", ls="--", label="preallocated (block_size slots)")
plt.xlabel("decode step")
plt.ylabel("KiB")
plt.legend()
plt.title(f"the KV cache grows {per_token} bytes per token")
plt.show()
print(f"GPT-2 small (12 layers, 768 wide, fp16): {2 * 12 * 768 * 2 / 1024:.0f} KiB per token")
"""),
    ("md", """
**Cached and uncached decoding give the same tokens.** Without a cache every step runs the
whole sequence again (O(T²) work per step in attention, O(T) in the rest); with it, one token.
"""),
    ("code", """
prompt = torch.randint(config.vocab_size, (1, 8))
n_new = 120

start = time.perf_counter()
cached = generate_cached(prompt, params, config, n_new, temperature=0.0)  # (1, n_new)
t_cached = time.perf_counter() - start

start = time.perf_counter()
seq = prompt
with torch.no_grad():
    for _ in range(n_new):  # no cache: the whole sequence every step
        logits, _ = model(seq)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
t_full = time.perf_counter() - start
uncached = seq[:, prompt.shape[1] :]
print("same tokens:", torch.equal(cached, uncached))
print(f"{n_new} tokens: cached {t_cached:.2f} s, uncached {t_full:.2f} s "
      f"({t_full / t_cached:.1f}x)")
"""),
    ("md", """
## 2. Int8 weights

Each output channel (a row of W) gets a scale `s = max|w| / 127`, and its weights become
integers `q = round(w / s)` in [-127, 127]: a quarter of the bytes. The layer computes
`y = (x qᵀ) · s + b`, and the rounding error per weight is at most `s / 2`.
"""),
    ("code", """
W = params["transformer.h.0.mlp.c_fc.weight"]  # (512, 128)
q, scale = quantize_per_channel(W)
err = (dequantize(q, scale) - W).abs()
print(q.dtype, tuple(q.shape), scale.dtype, tuple(scale.shape))
print(f"largest error {err.max():.2e} <= half the largest scale {scale.max() / 2:.2e}")
x = torch.randn(4, 128)
y = quantized_linear(x, q, scale, params["transformer.h.0.mlp.c_fc.bias"])
y_ref = torch.nn.functional.linear(x, W, params["transformer.h.0.mlp.c_fc.bias"])
print(f"layer output error: {(y - y_ref).abs().max():.2e} (outputs of size {y_ref.std():.2f})")
"""),
    ("code", """
import copy

int8_model = quantization.quantize(copy.deepcopy(model))  # every block's linear layer
before = quantization.linear_weight_bytes(model)
after = quantization.linear_weight_bytes(int8_model)
ids = torch.randint(config.vocab_size, (1, 64))
with torch.no_grad():
    ref_logits, q_logits = model(ids)[0], int8_model(ids)[0]
agree = (ref_logits.argmax(-1) == q_logits.argmax(-1)).float().mean()
print(f"linear weights: {before:,} bytes -> {after:,} bytes ({after / before:.2f}x)")
print(f"logits: max error {(ref_logits - q_logits).abs().max():.2e}, "
      f"the top token agrees at {agree:.0%} of positions")
plt.figure(figsize=(5, 2.5))
plt.barh(["float32", "int8 + scales"], [before / 1024, after / 1024])
plt.xlabel("KiB of linear weights")
plt.show()
"""),
    ("md", """
## 3. Continuous batching

A server decodes many requests at once: one forward pass of n tokens costs little more than
one of a single token. Requests finish at different times; **continuous** batching retires a
finished request between two steps, moves the others' cache rows down, and prefills a waiting
request into the free row, first in first out. Each keeps its own sampling settings and
seeded generator, so its tokens are the ones it gets alone.
"""),
    ("code", """
from collections import deque

lengths = [30, 8, 14, 22, 6, 18, 10]  # max_new_tokens of each request
arrivals = [0, 0, 0, 2, 5, 9, 12]  # the step at which each arrives
requests = [batching.Request(tuple(torch.randint(65, (4,)).tolist()), max_new_tokens=n,
                             temperature=0.8, seed=i) for i, n in enumerate(lengths)]
seqs = [batching.start(r, model) for r in requests]
batch = batching.Batch.empty(model, max_batch=3)
waiting, timeline, step = deque(), [], 0  # timeline: (step, request, row)
while step < 200 and (any(a >= step for a in arrivals) or waiting or batch.active):
    waiting.extend(s for s, a in zip(seqs, arrivals, strict=True) if a == step)
    retire(batch)
    admit(model, waiting, batch)
    timeline += [(step, seqs.index(s), row) for row, s in enumerate(batch.active)]
    if batch.active:
        decode_step(model, batch)
    step += 1

alone = [batching.run_batched(model, [r], max_batch=1)[0] for r in requests]
print("each request's tokens are the ones it gets alone:",
      all(s.tokens == a for s, a in zip(seqs, alone, strict=True)))
fig, ax = plt.subplots(figsize=(9, 3))
for i in range(len(requests)):
    steps = [s for s, r, _ in timeline if r == i]
    ax.broken_barh([(arrivals[i], steps[0] - arrivals[i])], (i - 0.3, 0.6), color="lightgray")
    ax.broken_barh([(steps[0], len(steps))], (i - 0.3, 0.6), color=f"C{i}")
ax.set_xlabel("decode step (gray: waiting for a free row; colour: in the batch of 3)")
ax.set_ylabel("request")
plt.show()
print(f"{step} steps for {sum(lengths)} tokens: {sum(lengths) / step:.1f} tokens per step")
"""),
    ("md", """
The library's `Engine` (`reference/batching.py`) runs this same loop in its own thread, and the
server (chapter 9) streams each request's tokens from it. Next: `pytest exercises -m kvcache`.
"""),
]

# ------------------------------------------------------------------------ 08: evaluation

EVALUATION = [
    ("md", """
# Chapter 8: evaluation (sliding-window perplexity, perplexity by position, calibration)

A language model is judged on text it never trained on. **Perplexity** is the exponential of
the mean negative log-likelihood per token, `exp(-1/N Σ log p(x_i | x_<i))`: the number of
equally likely tokens the model is, on average, choosing between. It depends on how much
context each prediction had, so every number states its context and stride.

- Exercises: `pytest exercises -m evaluation` (`exercises/evaluation.py`).
- Docs: `docs/components/evaluation.md` and the guide `docs/guides/evaluation.md`;
  `python -m reference evaluate RUN_DIR` writes all of this as a report.
"""),
    ("code", FIND_COURSE),
    ("code", """
from course import pick

from reference import evaluation as library

windows = pick("evaluation", "windows", library.windows)
token_nlls = pick("evaluation", "token_nlls", library.token_nlls)
perplexity = pick("evaluation", "perplexity", library.perplexity)
calibration = pick("evaluation", "calibration", library.calibration)
"""),
    ("md", """
## 1. A model to evaluate

A tiny character-level GPT trained for a few seconds on the built-in corpus, its last 10%
held out as the evaluation text.
"""),
    ("code", TINY_BASE.format(steps=300)),
    ("code", """
import matplotlib.pyplot as plt

plt.figure(figsize=(6, 3))
plt.plot(losses)
plt.xlabel("step")
plt.ylabel("training loss (nats per token)")
plt.show()
val_ids = val_data[:16000].tolist()  # the held-out text, as token ids
val_text = base_tok.decode(val_ids)
"""),
    ("md", """
## 2. The sliding window

A text longer than the context is cut into windows of `context` tokens starting every
`stride` tokens; each window scores only the tokens that no earlier window scored, so every
token is scored exactly once. With `stride < context` the scored tokens see at least
`context - stride` tokens of context (Hugging Face's strided perplexity), at the cost of
`context / stride` times the forward passes. A model that uses a long context scores lower
with a small stride; this one, trained for seconds, barely does (section 3 shows why).
"""),
    ("code", """
for begin, end, first in windows(12, context=6, stride=3):
    print(f"feed tokens [{begin}, {end}), score the predictions of tokens {first + 1}..{end}")
"""),
    ("code", """
import time

for context, stride in [(32, 32), (32, 16), (32, 4)]:
    start = time.perf_counter()
    p = perplexity(base, val_ids, text=val_text, context=context, stride=stride)
    print(f"context {context}, stride {stride:2d}: perplexity {p.ppl:6.3f}, "
          f"{p.bits_per_byte:.3f} bits/byte over {p.tokens} tokens "
          f"({time.perf_counter() - start:.1f} s)")
untrained = GPT(config).eval()
print(f"the same model untrained: perplexity "
      f"{perplexity(untrained, val_ids, context=32, stride=32).ppl:.1f} "
      f"(a uniform guess: {config.vocab_size})")
"""),
    ("md", """
## 3. Perplexity by position

With disjoint windows (`stride = context`) the token at position p of a window had p + 1
tokens of context. The curve shows how much of its context the model uses: here it falls over
the first few characters and then stays flat, as a model trained for seconds would.
"""),
    ("code", """
import torch

nll, position = token_nlls(base, val_ids, context=32, stride=32)
by_position = torch.zeros(32, dtype=torch.float64).index_add_(0, position, nll)
counts = torch.bincount(position, minlength=32)
ppl_by_position = (by_position / counts).exp()
plt.figure(figsize=(6, 3))
plt.plot(range(1, 33), ppl_by_position)
plt.xlabel("tokens of context (position in the window + 1)")
plt.ylabel("perplexity")
plt.title("perplexity by position")
plt.show()
"""),
    ("md", """
## 4. Calibration

A model is *calibrated* when, among the predictions it makes with confidence 0.7, 70% are
right. Bin the top-1 predictions by confidence; the **reliability diagram** plots each bin's
accuracy against its mean confidence, and the **expected calibration error** is the weighted
gap, `ECE = Σ_b (n_b / N) |acc_b - conf_b|`.
"""),
    ("code", """
ids = torch.tensor(val_ids)
n = (len(ids) - 1) // 32 * 32
x, y = ids[:n].view(-1, 32), ids[1 : n + 1].view(-1, 32)  # disjoint windows
with torch.no_grad():
    probs = base(x)[0].softmax(-1)  # (B, T, V)
confidence, top = probs.max(-1)
cal = calibration(confidence, top == y, bins=10)
print(f"ECE {cal.ece:.4f} over {confidence.numel()} predictions")
centres = [(a + b) / 2 for a, b in zip(cal.edges, cal.edges[1:], strict=False)]
fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.bar(centres, cal.accuracy, width=0.1, edgecolor="black", label="accuracy")
ax.plot([0, 1], [0, 1], "k--", label="perfectly calibrated")
ax.set_xlabel("confidence")
ax.set_ylabel("accuracy")
ax.set_title(f"reliability diagram (ECE {cal.ece:.3f})")
ax.legend()
plt.show()
"""),
    ("md", """
Next: `pytest exercises -m evaluation`, then `python -m reference evaluate runs/main` for the
full report (loss curves, samples across temperatures, error analysis) of a real run.
"""),
]

# ------------------------------------------------------------------------ 09: serving

SERVING = [
    ("md", """
# Chapter 9: serving (an OpenAI-compatible API)

`reference/server/` puts a model behind FastAPI and uvicorn: OpenAI's `/v1/completions` and
`/v1/chat/completions` (streamed as server-sent events), `/generate`, `/health`, Prometheus
`/metrics`. Generation runs in the continuous-batching engine's thread (chapter 7), never on
the event loop; every route but the health routes needs an API key.

- Exercises: `pytest exercises -m server` (`exercises/server.py`: the API-key check, the SSE
  framing and the `/generate` route of a small app).
- Docs: `docs/components/server.md` and the guide `docs/guides/serving.md`.
"""),
    ("md", COLAB.format(name="09_serving")),
    ("code", COLAB_SETUP),
    ("code", FIND_COURSE),
    ("code", """
from course import pick

from reference.server import auth, sse

check_api_key = pick("server", "check_api_key", auth.check_api_key)
sse_event = pick("server", "sse_event", sse.sse_event)
"""),
    ("md", """
## 1. Two small pieces

**Who may call**: `Authorization: Bearer <key>`, compared with every accepted key in constant
time (`hmac.compare_digest`), so the time an answer takes does not tell how much of a key was
guessed. **Streaming**: server-sent events, one `data: <line>` per line of the payload and a
blank line after each event; OpenAI's stream ends with `data: [DONE]`.
"""),
    ("code", """
keys = ["s3cret"]
for header in ["Bearer s3cret", "bearer s3cret", "Bearer wrong", "Basic s3cret", None]:
    print(f"{header!r:>17} -> {check_api_key(header, keys)!r}")
print(sse_event('{"text": "one"}'))
print(sse_event("two\\nlines"))
"""),
    ("md", """
## 2. A model to serve

A tiny character-level GPT trained for a few seconds on the built-in corpus and saved as a
checkpoint (weights as safetensors, the tokenizer in `meta.json`): what `train` writes.
"""),
    ("code", TINY_BASE.format(steps=100)),
    ("code", """
import json
import shutil
import tempfile
from pathlib import Path

from reference.checkpoint import save_checkpoint
from reference.tokenizers import META_NAME

run_dir = Path(tempfile.mkdtemp()) / "tiny"
save_checkpoint(base, run_dir)
(run_dir / META_NAME).write_text(json.dumps({"tokenizer": base_tok.to_dict()}))
print(sorted(p.name for p in run_dir.iterdir()))
"""),
    ("md", """
## 3. A real server on 127.0.0.1

`create_app(settings)` builds the app; uvicorn serves it on a free port in a background thread
(in production: `python -m reference serve RUN_DIR`, or uvicorn with `LLMFS_SERVE_*` settings).
"""),
    ("code", """
import threading

import uvicorn

from reference.server.app import create_app
from reference.server.settings import ServerSettings

settings = ServerSettings(model=str(run_dir), model_name="tiny", api_keys=["s3cret"],
                          max_batch=4, threads=1, log_level="warning")
server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0,
                                       log_level="warning"))
thread = threading.Thread(target=server.run, daemon=True)
thread.start()
deadline = time.monotonic() + 60
while not server.started and thread.is_alive() and time.monotonic() < deadline:
    time.sleep(0.05)
port = server.servers[0].sockets[0].getsockname()[1]
url = f"http://127.0.0.1:{port}"
print("serving at", url)
"""),
    ("code", """
import httpx

health = httpx.get(f"{url}/health")
anonymous = httpx.get(f"{url}/v1/models")
print("/health:", health.status_code, health.json())
print("/v1/models without a key:", anonymous.status_code, anonymous.json()["error"]["message"])
"""),
    ("md", """
## 4. The official `openai` client

The client parses our responses into its own typed models: it is the oracle that we speak
OpenAI's protocol.
"""),
    ("code", """
from openai import OpenAI

client = OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0, timeout=60)
print([m.id for m in client.models.list()])
completion = client.completions.create(model="tiny", prompt="The ", max_tokens=24,
                                       temperature=0.8, seed=1)
print(repr(completion.choices[0].text), completion.usage)
print("streamed: ", end="")
for chunk in client.completions.create(model="tiny", prompt="The ", max_tokens=24,
                                       temperature=0.8, seed=1, stream=True):
    print(chunk.choices[0].text, end="", flush=True)
print()
"""),
    ("md", """
The same stream as raw server-sent events, read with `httpx` line by line as they arrive:
"""),
    ("code", """
body = {"model": "tiny", "prompt": "def ", "max_tokens": 8, "temperature": 0, "stream": True}
with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60,
                  headers={"Authorization": "Bearer s3cret"}) as response:
    for line in response.iter_lines():  # one event per token: its text in a JSON chunk
        if line.startswith("data: {"):
            event = json.loads(line.removeprefix("data: "))
            print("data: {... 'text':", repr(event["choices"][0]["text"]), "...}")
        elif line:
            print(line)
"""),
    ("md", """
## 5. Metrics, and a clean shutdown

Prometheus scrapes `/metrics`: requests by route and status, tokens generated, time to first
token, the engine's queue. Setting `should_exit` lets uvicorn finish the open requests, stop
the engine's thread and close the socket.
"""),
    ("code", """
metrics = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer s3cret"}).text
for line in metrics.splitlines():
    if line.startswith("llmfs_") and "_bucket" not in line and "_created" not in line:
        print(line)
server.should_exit = True
thread.join(30)
print("stopped:", not thread.is_alive())
shutil.rmtree(run_dir.parent)  # the checkpoint was only for this notebook
"""),
    ("md", """
Next: `pytest exercises -m server`. To deploy, see `docs/guides/serving.md` (Docker, API keys,
rate limits, several replicas).
"""),
]

# ------------------------------------------------------------------------ 10: modern decoders

MODERN = [
    ("md", """
# Chapter 10: the modern decoder (RMSNorm, rotary embeddings, grouped-query attention, MoE)

Llama-style models change four things in GPT-2's block: **RMSNorm** instead of LayerNorm,
**rotary position embeddings** (RoPE) instead of learned positions, **grouped-query attention**
(several query heads share one key/value head) and, in Mixtral, a **mixture of experts** whose
router sends each token to k of E feed-forward networks.

- Exercises: `pytest exercises -m llama` (`exercises/llama.py`) and `pytest exercises -m moe`
  (`exercises/moe.py`).
- Docs: `docs/components/llama.md`, `docs/components/moe.md`; `model.arch=llama` trains one.
"""),
    ("code", FIND_COURSE),
    ("code", """
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from course import pick

from reference import llama, moe, rmsnorm, rope

rms_norm = pick("llama", "rms_norm", rmsnorm.rms_norm)
rope_cache = pick("llama", "rope_cache", rope.rope_cache)
apply_rotary = pick("llama", "apply_rotary", rope.apply_rotary)
grouped_query_attention = pick("llama", "grouped_query_attention",
                               llama.grouped_query_attention)
route = pick("moe", "route", moe.route)
_ = torch.manual_seed(0)
"""),
    ("md", """
## 1. RMSNorm

LayerNorm centres and scales: `(x - mean(x)) / std(x) · w + b`. RMSNorm only scales, by the
root mean square: `x / sqrt(mean(x²) + ε) · w`. One reduction instead of two, no bias, and it
trains as well. The two agree exactly on a vector whose mean is zero.
"""),
    ("code", """
C = 8
w = torch.ones(C)
x = torch.randn(C)
centred = x - x.mean()
print("RMSNorm  :", rms_norm(x, w, 1e-6).numpy().round(3))
print("LayerNorm:", F.layer_norm(x, (C,), eps=1e-6).numpy().round(3))
print("equal on a centred vector:",
      torch.allclose(rms_norm(centred, w, 1e-6), F.layer_norm(centred, (C,), eps=1e-6),
                     atol=1e-5))
"""),
    ("md", """
## 2. Rotary position embeddings

RoPE rotates each pair of channels of q and k by an angle proportional to the token's
position, `p · ω_i`, with `ω_i = θ^{-2i/d}` (fast pairs first, slow ones last). A rotation
by `mω` of q and `nω` of k leaves their dot product depending only on `m - n`:

$$\\langle R_{m\\omega} q, R_{n\\omega} k \\rangle = \\langle q, R_{(n-m)\\omega} k \\rangle .$$

Below, one pair of channels of the same vector at positions 0..7, and the scores of a fixed q
and k placed at every pair of positions: constant along each diagonal.
"""),
    ("code", """
hs, T = 16, 24
cos, sin = rope_cache(hs, T)  # (T, hs/2) each
v = torch.zeros(1, 1, T, hs)
v[..., 0] = 1.0  # the first pair of channels (0, hs/2): the fastest rotation
rotated = apply_rotary(v, cos, sin)[0, 0]  # (T, hs)

q, k = torch.randn(hs), torch.randn(hs)
q_all = apply_rotary(q.expand(1, 1, T, hs).contiguous(), cos, sin)[0, 0]  # q at every position
k_all = apply_rotary(k.expand(1, 1, T, hs).contiguous(), cos, sin)[0, 0]
scores = q_all @ k_all.T  # (T, T): query position m, key position n

fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
for p in range(8):
    a.arrow(0, 0, rotated[p, 0], rotated[p, hs // 2], head_width=0.04, color=f"C{p}")
    a.annotate(f"p={p}", (1.1 * rotated[p, 0], 1.1 * rotated[p, hs // 2]))
a.set_xlim(-1.3, 1.3)
a.set_ylim(-1.3, 1.3)
a.set_aspect("equal")
a.set_title("one pair of channels, rotated by p·ω")
im = b.imshow(scores, cmap="coolwarm")
b.set_xlabel("key position n")
b.set_ylabel("query position m")
b.set_title("q·k depends only on m - n")
fig.colorbar(im, ax=b)
plt.show()
print("constant along the diagonals:",
      torch.allclose(scores.diagonal(3), scores.diagonal(3)[:1].expand(T - 3), atol=1e-4))
"""),
    ("md", """
## 3. Grouped-query attention

With `n_kv` key/value heads for `n_head` query heads, each kv head serves
`n_head / n_kv` query heads. The attention is the ordinary one with each kv head repeated; the
saving is in the **KV cache**, which stores only the kv heads:
`2 · n_layer · n_kv · head_size` numbers per token instead of `2 · n_layer · n_head · head_size`.
"""),
    ("code", """
B, nh, n_kv, T, hs = 1, 8, 2, 5, 4
q = torch.randn(B, nh, T, hs)
k, v = torch.randn(B, n_kv, T, hs), torch.randn(B, n_kv, T, hs)
out = grouped_query_attention(q, k, v)
repeated = F.scaled_dot_product_attention(q, k.repeat_interleave(nh // n_kv, dim=1),
                                          v.repeat_interleave(nh // n_kv, dim=1),
                                          is_causal=True)
print("equals attention with the kv heads repeated:", torch.allclose(out, repeated, atol=1e-6))

# A 70B-class shape: 80 layers, 64 query heads of 128, bf16 (2 bytes), 4,096 tokens.
kv_heads = [64, 8, 1]
gib = [2 * 80 * n * 128 * 2 * 4096 / 2**30 for n in kv_heads]
plt.figure(figsize=(6, 2.8))
plt.bar([f"{n} kv heads" for n in kv_heads], gib)
plt.ylabel("GiB per 4,096-token sequence")
plt.title("KV cache: multi-head (64), grouped (8), multi-query (1)")
plt.show()
print([f"{g:.2f} GiB" for g in gib])
"""),
    ("md", """
## 4. Mixture of experts: routing

A router (a linear layer) gives each token a logit per expert; the token goes to its top-k
experts, weighted by their softmax probabilities renormalised over the k. Only k of the E
feed-forward networks run per token. A router that favours a few experts leaves the others
idle, which the load-balancing loss (Switch Transformer's, as Hugging Face computes it)
penalises: `E · Σ_e f_e · P_e`, with `f_e` the fraction of tokens sent to e (over the k
choices) and `P_e` its mean router probability: k when the load is even, more when it is not.
"""),
    ("code", """
N, E, top_k = 2048, 8, 2
balanced = torch.randn(N, E)
skewed = balanced + torch.linspace(2, 0, E)  # a router that prefers the first experts
fig, axes = plt.subplots(1, 2, figsize=(10, 3), sharey=True)
for ax, (name, logits) in zip(axes, [("balanced", balanced), ("skewed", skewed)], strict=True):
    weights, indices = route(logits, top_k)  # (N, k) each
    counts = moe.expert_counts(indices, E)
    loss = moe.load_balancing_loss(logits, E, top_k)
    ax.bar(range(E), counts)
    ax.axhline(N * top_k / E, color="gray", ls="--")
    ax.set_title(f"{name} router: load-balancing loss {float(loss):.2f}")
    ax.set_xlabel("expert")
axes[0].set_ylabel("tokens routed")
plt.show()
print(f"the first token goes to experts {indices[0].tolist()} with weights "
      f"{[round(w, 3) for w in weights[0].tolist()]} (sum {float(weights[0].sum()):.3f})")
"""),
    ("md", """
Next: `pytest exercises -m llama` and `pytest exercises -m moe`; then
`python -m reference train --config configs/llama_char.yaml` trains a small Llama.
"""),
]

NOTEBOOKS = {
    "06_finetuning": FINETUNING,
    "07_inference": INFERENCE,
    "08_evaluation": EVALUATION,
    "09_serving": SERVING,
    "10_modern_decoders": MODERN,
}
