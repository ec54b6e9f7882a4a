# ruff: noqa: E501 -- the rows of the contract table are one line each
"""Spec: fine-tuning (issue 12): the chat format, supervised fine-tuning targets and batches,
sequence log-probabilities and the DPO loss.

Conventions: a message is ``{"role": "system" | "user" | "assistant", "content": text}``; a
conversation renders as ``<|role|>content<|end|>`` per turn with nothing between turns, and the
inference prompt appends ``<|assistant|>``. The specials ``<|system|>``, ``<|user|>``,
``<|assistant|>``, ``<|end|>`` get ids ``base.vocab_size + 0..3``. The learned tokens are the
content and ``<|end|>`` of every assistant turn. Targets use ``-1`` for "no loss" (the model's
``ignore_index``); batches are right-padded. DPO follows Rafailov et al. (2023), eq. 7, with
summed response log-probabilities and a frozen reference.

Contract:

| clause | tests | oracle |
|---|---|---|
| hand-worked chat template: text, ids, learn flags of a two-turn conversation; a special token is one id | `test_chat_template_hand_worked_example` | hand-worked (character base "abct") |
| render equals a Hugging Face Jinja chat template with and without the generation prompt, and its ids equal HF's tokenizer's (special tokens added after the base vocabulary) | `test_render_and_encode_match_transformers_chat_template`, `test_gpt2_base_matches_transformers_chat_template` | `transformers` `PreTrainedTokenizerFast.apply_chat_template` built offline from a `tokenizers` object (character base; GPT-2's ranks) |
| encode_chat's ids and learn flags equal HF's ids and assistant mask (`{% generation %}` blocks) | `test_encode_chat_matches_transformers_assistant_mask`, `test_gpt2_base_matches_transformers_chat_template` | `apply_chat_template(return_assistant_tokens_mask=True)` |
| the chat tokenizer round-trips any text (unicode, fragments of the special strings) over char, BPE and GPT-2 bases; each special string is exactly one id | `test_chat_tokenizer_roundtrip_and_one_id_per_special` | property; `str.count` of the specials |
| text between special strings encodes exactly as the base tokenizer encodes it | `test_text_between_specials_encodes_as_the_base_tokenizer` | the base tokenizer (char, `reference.bpe` trained here, GPT-2's tiktoken ranks) |
| existing ids keep their meaning: the specials follow the base vocabulary in order, base ids decode as before | `test_existing_ids_keep_their_meaning` | the base tokenizer |
| the same template at training and inference: a training example's prompt ids are the ids of `render(messages[:-1], add_generation_prompt=True)` and carry no loss | `test_training_prompt_equals_the_inference_prompt` | property over conversations |
| bad conversations (unknown role, a special string in a content, none) and a chat tokenizer over a chat tokenizer raise ValueError naming them | `test_chat_template_rejects_bad_messages` | the documented errors |
| sft_targets: inputs ids[:-1], targets the next id where it is learned, else -1 | `test_sft_targets_hand_worked_example`, `test_sft_targets_shift_and_mask_the_next_token` | hand-worked; property |
| no loss on the prompt: the model's loss on sft targets equals cross-entropy over the assistant's tokens only | `test_sft_loss_is_cross_entropy_over_the_assistant_tokens_only` | `F.cross_entropy` (no ignore_index) over the positions HF's assistant mask marks, through `reference.model.GPT` |
| sft_batch: right padding (pad_id in, -1 out), int64 (B, T) on the device; padding never changes a real token's logits, and the batch loss reads every example's learned tokens and nothing else | `test_sft_batch_hand_worked_example`, `test_sft_batch_padding_never_changes_real_logits_or_the_loss` | hand-worked; each example alone through `reference.model.GPT`; `F.cross_entropy` over the learned positions |
| sft_targets and sft_batch reject bad examples, an empty batch and a negative pad id | `test_sft_rejects_bad_examples` | the documented errors |
| sequence_logprob: the sum of the targets' log-probabilities over non-ignored positions, (B,), in float32 (float64 stays float64, bfloat16 computed in float32) | `test_sequence_logprob_hand_worked_example`, `test_sequence_logprob_matches_float64_log_softmax_gather` | hand-worked; `F.log_softmax` + `gather` in float64 |
| an ignored position adds exactly 0 and gets no gradient, even where its logits are -inf; a row with no target gives 0 | `test_sequence_logprob_ignored_positions_add_exactly_zero` | `torch.autograd` through the float64 oracle |
| sequence_logprob rejects bad shapes | `test_sequence_logprob_validates_its_inputs` | the documented errors |
| DPO loss: hand-worked cases, log 2 where the policy equals the reference, the mean over the batch | `test_dpo_loss_hand_worked_example` | hand-worked |
| DPO loss equals the paper's formula (eq. 7) for any beta, float32 and float64, and stays finite at extreme margins | `test_dpo_loss_matches_the_papers_formula`, `test_dpo_loss_is_finite_at_extreme_margins` | the formula evaluated here with `math.log1p`/`math.exp` in float64 |
| the reference is frozen: gradients reach only the policy's log-probabilities, and equal the formula's | `test_dpo_gradient_reaches_only_the_policy` | the derivative -β σ(-β m) / B, by hand |
| a DPO step on a GPT raises the chosen response's margin over the rejected | `test_a_dpo_step_prefers_the_chosen_response` | property through `reference.model.GPT` and `torch.optim.SGD` |
| dpo_loss rejects beta <= 0 or infinite and mismatched shapes | `test_dpo_loss_validates_its_inputs` | the documented errors |

Tolerances (absolute): float32 1e-5, float64 1e-10; sums of up to 8 float32 log-probabilities of
size ~3 carry ~1e-6 of rounding.
"""

from __future__ import annotations

import copy
import math
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from reference.model import GPT, GPTConfig
from reference.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, gpt2_tokenizer
from specs.hints import Wrong
from specs.hints import assert_close as hinted_close

COMPONENT = "finetune"
pytestmark = pytest.mark.finetune

SPECIALS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
EOT = "<|endoftext|>"  # GPT-2's own special token, id 50256
ROLES = ("system", "user", "assistant")
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}

# The character base: every character the strategies below draw, the specials' letters included.
FRAGMENTS = ["<|", "|>", "<|user", "end|>", "<|assistant", "|", "<", ">", "<|end", "system|>",
             "<||>", "<|END|>", "<|user|", "|user|>", "<<|", "|>>"]
ALPHABET = "".join(sorted(set("abc xyz\néà漢🙂!?" + "".join(SPECIALS) + "".join(FRAGMENTS))))
# A jinja template equal to ours, the assistant's content and <|end|> in {% generation %}.
JINJA = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|end|>' }}"
    "{% endgeneration %}{% else %}{{ m['content'] + '<|end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
BPE_TEXT = ("The quick brown fox jumps over the lazy dog. Déjà vu, naïve café! 漢字かな 🙂🙃\n"
            "def reverse(s): return s[::-1]  # <user|> 12345\n") * 8


def no_special(text: str) -> bool:
    return not any(s in text for s in SPECIALS)


def contents(alphabet: str | None = ALPHABET) -> st.SearchStrategy[str]:
    """Texts of the alphabet (any unicode if None) mixed with fragments of special strings, never
    a whole special string."""
    chars = st.text(alphabet, max_size=6) if alphabet else st.text(
        st.characters(codec="utf-8"), max_size=6)
    pieces = st.one_of(chars, st.sampled_from(FRAGMENTS))
    return st.lists(pieces, max_size=4).map("".join).filter(no_special)


def conversations(alphabet: str | None = ALPHABET, *, last: str | None = None,
                  roles: tuple[str, ...] = ROLES) -> st.SearchStrategy[list[dict[str, str]]]:
    """1 to 4 turns of any roles; with ``last``, 0 to 4 turns then one of role ``last``."""
    turn = st.tuples(st.sampled_from(roles), contents(alphabet))
    tail = st.just([]) if last is None else contents(alphabet).map(lambda c: [(last, c)])
    return st.tuples(st.lists(turn, min_size=0 if last else 1, max_size=4), tail).map(
        lambda t: [{"role": r, "content": c} for r, c in t[0] + t[1]])


@cache
def trained_bpe() -> BPETokenizer:
    from reference.bpe import Tokenizer as BPE
    from reference.bpe import train_bpe

    vocab, merges = train_bpe(BPE_TEXT, 320)
    return BPETokenizer(BPE(vocab, merges))


BASES = ["char", "bpe", "gpt2"]


def load_base(request: pytest.FixtureRequest, name: str) -> Tokenizer:
    """A base tokenizer: characters, a byte-level BPE trained here, or GPT-2's (the shared
    data; skipped without it outside CI). Parametrized per test, not a module fixture, so the
    tests run in the file's order (cheap hand-worked tests first: a mutant stops there)."""
    if name == "char":
        return CharTokenizer(ALPHABET)
    if name == "bpe":
        return trained_bpe()
    shared: Path = request.getfixturevalue("shared_data")
    return gpt2_base(str(shared / "gpt2" / "gpt2.tiktoken"))


@cache
def gpt2_base(ranks: str) -> Tokenizer:
    return gpt2_tokenizer(ranks)


def base_alphabet(tok: Tokenizer) -> str | None:
    return ALPHABET if isinstance(tok, CharTokenizer) else None


def hf_tokenizer(model: Any, pre_tokenizer: Any = None, decoder: Any = None) -> Any:
    """A PreTrainedTokenizerFast over a ``tokenizers`` model, with the four specials added
    after its vocabulary and our template as its chat template."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import PreTrainedTokenizerFast

    tk = HFTokenizer(model)
    if pre_tokenizer is not None:
        tk.pre_tokenizer = pre_tokenizer
    if decoder is not None:
        tk.decoder = decoder
    size = tk.get_vocab_size()
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    assert [tk.token_to_id(s) for s in SPECIALS] == [size + i for i in range(4)]
    return PreTrainedTokenizerFast(tokenizer_object=tk, chat_template=JINJA)


@pytest.fixture(scope="module")
def hf_char() -> Any:
    """HF's tokenizer over the character base: a BPE with no merges, one token per character."""
    from tokenizers import models

    return hf_tokenizer(models.BPE(vocab={c: i for i, c in enumerate(ALPHABET)}, merges=[]))


def hf_apply(hf: Any, messages: list[dict[str, str]], **kwargs: Any) -> Any:
    return hf.apply_chat_template(messages, **kwargs)


def hf_ids_and_mask(hf: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    out = hf_apply(hf, messages, tokenize=True, return_dict=True,
                   return_assistant_tokens_mask=True)
    return list(out["input_ids"]), [bool(m) for m in out["assistant_masks"]]


def mask_cause(ids: list[int], learn: list[bool], hf_ids: list[int], mask: list[bool]) -> str:
    """Why encode_chat's (ids, learn) differ from HF's ids and assistant mask, cause first."""
    if ids != hf_ids:
        return f"likely cause: the ids are not the chat template's: {ids}, HF's {hf_ids}"
    starts = [t for t in range(len(mask)) if mask[t] and (t == 0 or not mask[t - 1])]
    last_only = [m and t >= starts[-1] for t, m in enumerate(mask)] if starts else mask
    if learn == last_only:
        return ("likely cause: only the last assistant turn learned: every assistant turn's "
                f"content and <|end|> are learned: learn {learn}, HF's mask {mask}")
    return ("likely cause: learn is not HF's assistant mask (every assistant turn's content and "
            f"<|end|>): learn {learn}, HF's mask {mask}")


def tiny_gpt(vocab_size: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(block_size=32, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=16,
                    dropout=0.0, bias=True)
    return GPT(cfg).eval()


def assert_close(actual: Tensor, expected: Tensor, what: str, *, wrong: Wrong | None = None,
                 hint: str = "") -> None:
    """Equal dtype and shape, close within the dtype's atol; on failure the message names the
    classic bug in ``wrong`` the answer matches, else ``hint`` (see specs/hints.py)."""
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, want {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, want " \
        f"{tuple(expected.shape)}"
    tol = TOL[expected.dtype]
    hinted_close(actual, expected, what=f"{what} (atol={tol})", wrong=wrong, hint=hint, atol=tol,
                 rtol=0)


def render_cause(text: str, messages: list[dict[str, str]], prompt: bool) -> str:
    """The likely cause of a wrong rendering: the classic wrong template that gives ``text``."""
    def template(sep: str = "", end: str = "<|end|>", ask: str = "<|assistant|>") -> str:
        turns = "".join(f"<|{m['role']}|>{sep}{m['content']}{end}" for m in messages)
        return turns + (ask if prompt else "")

    wrong = {template(sep="\n"): "a newline after the role token: <|role|>content, nothing "
                                 "between",
             template(end=""): "no <|end|> after each turn: every turn ends with <|end|>",
             template(end="<|end|>\n"): "a newline between turns: nothing between <|end|> and "
                                        "the next role token",
             template(ask=""): "the inference prompt must end with <|assistant|> "
                               "(add_generation_prompt=True): the model answers from there"}
    return "likely cause: " + wrong.get(text, "the template is <|role|>content<|end|> per turn, "
                                              "nothing between, then <|assistant|> to ask")


def encode_or_fail(tok: Any, text: str, cause: str) -> list[int]:
    """``tok.encode(text)``; a ValueError (the base tokenizer met a special string's
    characters) fails with ``cause``."""
    try:
        ids: list[int] = tok.encode(text)
    except ValueError as error:
        pytest.fail(f"likely cause: {cause}: encode({text!r}) raised {error}")
    return ids


# --- the chat format --------------------------------------------------------------------------


@cache
def gpt2_pair(ranks: str) -> tuple[Any, Tokenizer]:
    """HF's GPT-2 tokenizer rebuilt from the tiktoken ranks (byte-level BPE, GPT-2's split) with
    <|endoftext|> at 50256 and our four specials after it; and the library's GPT-2 tokenizer."""
    from tokenizers import decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from reference.bpe import load_tiktoken_ranks

    table = bytes_to_unicode()
    vocab, merges = load_tiktoken_ranks(ranks)
    hf_vocab = {"".join(table[b] for b in t): i for i, t in vocab.items()} | {EOT: 50256}
    hf_merges = [("".join(table[b] for b in a), "".join(table[b] for b in b_))
                 for a, b_ in merges]
    model = models.BPE(vocab=hf_vocab, merges=hf_merges)
    hf = hf_tokenizer(model, pre_tokenizers.ByteLevel(add_prefix_space=False),
                      decoders.ByteLevel())
    return hf, gpt2_base(ranks)


def response_loss(logits: Tensor, ids: list[int], learn: list[bool]) -> Tensor:
    """Mean cross-entropy over the learned tokens only: position t - 1 predicts token t."""
    where = [t for t in range(1, len(ids)) if learn[t]]
    return F.cross_entropy(logits[[t - 1 for t in where]], torch.tensor([ids[t] for t in where]))


def oracle_logprob(logits: Tensor, targets: Tensor) -> Tensor:
    """float64 log_softmax + gather, summed over the positions whose target is not -1."""
    logp = F.log_softmax(logits.double(), dim=-1)
    rows = []
    for b in range(targets.size(0)):
        keep = (targets[b] != -1).nonzero().flatten()
        rows.append(logp[b, keep, targets[b, keep]].sum())
    return torch.stack(rows)


def formula(pc: float, pr: float, rc: float, rr: float, beta: float) -> float:
    """-log σ(β m) with m = (pc - rc) - (pr - rr) (the DPO paper's eq. 7), in float64."""
    z = beta * ((pc - rc) - (pr - rr))
    return math.log1p(math.exp(-z)) if z > -30 else -z + math.log1p(math.exp(z))


# --- hand-worked examples and fixed cases ----------------------------------------------------
# These come first: with a mutant patched in, most bugs stop the run here, in a second.


def test_chat_template_hand_worked_example(impl: Any) -> None:
    tok = impl.ChatTokenizer(CharTokenizer("abct"))  # a 0, b 1, c 2, t 3; specials 4..7
    messages = [{"role": "system", "content": "b"}, {"role": "user", "content": "cat"},
                {"role": "assistant", "content": "tac"}]
    text = impl.render(messages)
    assert text == "<|system|>b<|end|><|user|>cat<|end|><|assistant|>tac<|end|>", \
        f"{render_cause(text, messages, False)}: render gave {text!r}"
    text = impl.render(messages[:2], add_generation_prompt=True)
    assert text == "<|system|>b<|end|><|user|>cat<|end|><|assistant|>", \
        f"{render_cause(text, messages[:2], True)}: render(add_generation_prompt=True) gave {text!r}"
    whole = ("a special string went to the base tokenizer: cut out each special string (<|end|>, "
             "...) and map it to its one id, base.vocab_size + i")
    for text, want, cause in [
            ("<|end|>", [7], whole), ("cat<|assistant|>", [2, 0, 3, 6], whole),
            ("<|user|>a<|end|><|end|>b", [5, 0, 7, 7, 1],
             "only the first special string cut out: split at every special string, the base "
             "encodes only the text between")]:
        got = encode_or_fail(tok, text, cause)
        assert got == want, f"likely cause: {cause}: encode({text!r}) = {got}, want {want}"
    ids, learn = impl.encode_chat(tok, messages)
    want_ids = [4, 1, 7, 5, 2, 0, 3, 7, 6, 3, 0, 2, 7]
    assert ids == want_ids, (
        "likely cause: no <|end|> after each turn in training: the training ids are the ids of "
        "render(messages)" if 7 not in ids else
        "likely cause: encode_chat's ids are not the ids of render(messages)"
    ) + f": ids {ids}, want {want_ids}"
    wrong_learn = {
        "loss on the prompt: only the assistant's content and <|end|> are learned": [True] * 13,
        "loss on the assistant role token: <|assistant|> ends the inference prompt, learn only "
        "what follows it": [False] * 8 + [True] * 5,
        "<|end|> not learned: the model must learn to stop, so the assistant's <|end|> is "
        "learned": [False] * 9 + [True] * 3 + [False],
    }
    cause = next((c for c, v in wrong_learn.items() if v == learn),
                 "learn is True exactly on the assistant's content and its <|end|>")
    assert learn == [False] * 9 + [True] * 4, \
        f"likely cause: {cause}: learn {learn}, want the assistant's t a c and its <|end|>"


def test_sft_targets_hand_worked_example(impl: Any) -> None:
    # <|user|> c <|end|> <|assistant|> t <|end|>: learn t and <|end|>
    x, y = impl.sft_targets([5, 2, 7, 6, 3, 7], [False, False, False, False, True, True])
    wrong = {"targets not shifted: the target at t is the next id, ids[t + 1]": [-1, -1, -1, 6, 3],
             "the learn flag of the input, not the target: y[t] = ids[t + 1] where learn[t + 1]":
             [-1, -1, -1, -1, 7]}
    cause = next((c for c, v in wrong.items() if v == y),
                 "inputs ids[:-1], targets ids[1:] where learned, else -1")
    assert (x, y) == ([5, 2, 7, 6, 3], [-1, -1, -1, 3, 7]), \
        f"likely cause: {cause}: ({x}, {y}), want ([5, 2, 7, 6, 3], [-1, -1, -1, 3, 7])"


def test_sft_batch_hand_worked_example(impl: Any) -> None:
    x, y = impl.sft_batch([([4, 1, 7], [False, True, True]), ([4, 1, 2, 3], [False] * 4)],
                          pad_id=9, device="meta")
    assert x.device.type == "meta" and y.device.type == "meta"
    x, y = impl.sft_batch([([4, 1, 7], [False, True, True]), ([4, 1, 2, 3], [False] * 4),
                           ([6, 5], [False, True])], pad_id=9)
    assert x.dtype == y.dtype == torch.int64
    assert x.tolist() == [[4, 1, 9], [4, 1, 2], [6, 9, 9]], (
        "likely cause: padding on the left: right-pad, so every row starts at position 0"
        if x.tolist() == [[9, 4, 1], [4, 1, 2], [9, 9, 6]] else
        "likely cause: the inputs are not each example's ids[:-1], right-padded with pad_id"
    ) + f": inputs {x.tolist()}"
    assert y.tolist() == [[1, 7, -1], [-1, -1, -1], [5, -1, -1]], (
        "likely cause: padding targets are the pad id: the padding's targets are -1 (no loss)"
        if y.tolist() == [[1, 7, 9], [-1, -1, -1], [5, 9, 9]] else
        "likely cause: the targets are not each example's sft targets, right-padded with -1"
    ) + f": targets {y.tolist()}"


def test_sequence_logprob_hand_worked_example(impl: Any) -> None:
    logits = torch.tensor([[[0.0, 0.0], [5.0, -5.0], [math.log(3.0), 0.0]],
                           [[0.0, math.log(4.0)], [1.0, 2.0], [0.0, 0.0]]], dtype=torch.float64)
    targets = torch.tensor([[1, -1, 0], [1, -1, -1]])
    out = impl.sequence_logprob(logits.float(), targets)
    # row 0: log(1/2) + log(3/4); row 1: log(4/5)
    by_hand = torch.tensor([math.log(0.5) + math.log(0.75), math.log(0.8)], dtype=torch.float64)
    keep = targets != -1

    def picked(logp: Tensor) -> Tensor:  # (B, T): the target's log-probability, 0 where ignored
        return logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0].masked_fill(~keep, 0.0)

    def over_vocab() -> Tensor:
        return picked(F.log_softmax(logits, dim=-1))

    wrong: Wrong = {  # computed only when the answer is wrong
        "the mean instead of the sum over the positions": lambda: over_vocab().mean(-1).float(),
        "the mean instead of the sum over the kept positions":
            lambda: (over_vocab().sum(-1) / keep.sum(-1)).float(),
        "ignored positions included: a -1 target adds nothing":
            lambda: F.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0)[..., None])
            .sum((1, 2)).float(),
        "log_softmax over the positions (dim 1), not the vocabulary (dim -1)":
            lambda: picked(F.log_softmax(logits, dim=1)).sum(-1).float(),
    }
    assert_close(out, by_hand.float(), "sequence_logprob vs hand-worked", wrong=wrong,
                 hint="the sum over the kept positions of log_softmax(logits)[target]")
    out = impl.sequence_logprob(logits, targets)
    assert out.dtype == torch.float64, ("likely cause: float64 logits cast down to float32: "
                                        f"compute in float64 when given float64; got {out.dtype}")
    assert_close(out, by_hand, "sequence_logprob in float64 vs hand-worked")


def test_dpo_loss_hand_worked_example(impl: Any) -> None:
    t = torch.tensor
    flipped = ("the sign flipped, or chosen and rejected swapped: loss = -log σ(β m) with "
               "m = (π_c - ref_c) - (π_r - ref_r)")
    one = impl.dpo_loss(t([-1.0]), t([-3.0]), t([-2.0]), t([-2.0]), beta=1.0)  # m = 2
    assert_close(one, t(math.log1p(math.exp(-2.0))), "β = 1, m = 2: log(1 + e^-2)",
                 wrong={flipped: t(math.log1p(math.exp(2.0)))},
                 hint="loss = -log σ(β m), m = (π_c - ref_c) - (π_r - ref_r)")
    # β = 0.5; pair 0: m = (-4 + 5) - (-6 + 5) = 2, z = 1; pair 1: m = (-2 + 1) - (-1 + 2) = -2, z = -1
    two = impl.dpo_loss(t([-4.0, -2.0]), t([-6.0, -1.0]), t([-5.0, -1.0]), t([-5.0, -2.0]), beta=0.5)
    pairs = [(-4.0, -6.0, -5.0, -5.0), (-2.0, -1.0, -1.0, -2.0)]  # (pc, pr, rc, rr) per pair

    def mean_of(loss: Any) -> Tensor:  # a wrong formula's mean over the two pairs
        return t(sum(loss(*p) for p in pairs) / 2)

    assert_close(two, t((math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2),
                 "the mean over two pairs", wrong={
                     flipped: mean_of(lambda pc, pr, rc, rr: formula(pr, pc, rr, rc, 0.5)),
                     "β missing: the margin is scaled, z = β · m":
                         mean_of(lambda pc, pr, rc, rr: formula(pc, pr, rc, rr, 1.0)),
                     "reference terms swapped: m = (π_c - ref_c) - (π_r - ref_r), each response "
                     "against its own reference":
                         mean_of(lambda pc, pr, rc, rr: formula(pc, pr, rr, rc, 0.5)),
                     "the sum over the batch instead of the mean":
                         2 * mean_of(lambda pc, pr, rc, rr: formula(pc, pr, rc, rr, 0.5)),
                 }, hint="loss = mean over pairs of -log σ(β m), m = (π_c - ref_c) - (π_r - ref_r)")
    same = t([-7.0, -1.5, -30.0])
    assert_close(impl.dpo_loss(same, same - 2, same, same - 2, beta=3.0), t(math.log(2.0)),
                 "policy = reference: log 2")


def test_dpo_loss_is_finite_at_extreme_margins(impl: Any) -> None:
    t = torch.tensor
    loss = impl.dpo_loss(t([-1e4, 0.0]), t([0.0, -1e4]), t([0.0, 0.0]), t([0.0, 0.0]), beta=1.0)
    assert torch.isfinite(loss), ("likely cause: -log(sigmoid(z)) overflows (σ rounds to 0): use "
                                  f"-F.logsigmoid(z); DPO loss overflowed at margins ±1e4: {loss}")
    assert_close(loss, t(1e4 / 2), "pair 0 loses 1e4 nats, pair 1 about 0")


def test_dpo_gradient_reaches_only_the_policy(impl: Any) -> None:
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (-torch.rand(4, generator=g, dtype=torch.float64) * 5 for _ in range(4))
    for x in (pc, pr, rc, rr):
        x.requires_grad_()
    beta = 0.7
    impl.dpo_loss(pc, pr, rc, rr, beta=beta).backward()
    assert rc.grad is None and rr.grad is None, ("likely cause: the reference log-probabilities "
                                                 "are not detached: the frozen reference must get "
                                                 "no gradient")
    assert pc.grad is not None and pr.grad is not None
    z = beta * ((pc - rc) - (pr - rr)).detach()
    d = -beta * torch.sigmoid(-z) / 4  # d/dm of mean(-log σ(β m))
    assert_close(pc.grad, d, "d loss / d policy_chosen")
    assert_close(pr.grad, -d, "d loss / d policy_rejected")


def test_sequence_logprob_ignored_positions_add_exactly_zero(impl: Any) -> None:
    inf = math.inf
    logits = torch.tensor([[[0.0, -inf, 1.0], [-inf, 0.0, 0.0]],
                           [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], requires_grad=True)
    targets = torch.tensor([[2, -1], [-1, -1]])  # row 0, t = 1: clamping -1 to 0 picks -inf
    out = impl.sequence_logprob(logits, targets)
    assert not out.isnan().any(), ("likely cause: masking by multiplying: -inf · 0 is NaN; use "
                                   f"masked_fill or torch.where: an ignored position made NaN: {out}")
    assert out[1].item() == 0.0, "a row with no target gives 0"
    out.sum().backward()
    assert logits.grad is not None
    assert (logits.grad[0, 1] == 0).all() and (logits.grad[1] == 0).all(), \
        "ignored positions get no gradient"
    ref = logits.detach().double().requires_grad_()
    oracle_logprob(ref, targets).sum().backward()
    assert ref.grad is not None
    assert_close(logits.grad[0, 0], ref.grad[0, 0].float(), "the gradient at the kept position")


# --- the chat format: Hugging Face's chat templates and properties ------------------------------


@given(data=st.data())
def test_render_and_encode_match_transformers_chat_template(impl: Any, hf_char: Any,
                                                           data: st.DataObject) -> None:
    messages = data.draw(conversations(), label="messages")
    prompt = data.draw(st.booleans(), label="add_generation_prompt")
    text = impl.render(messages, add_generation_prompt=prompt)
    assert text == hf_apply(hf_char, messages, tokenize=False, add_generation_prompt=prompt)
    ids = impl.ChatTokenizer(CharTokenizer(ALPHABET)).encode(text)
    assert ids == list(hf_char(text, add_special_tokens=False)["input_ids"])


@given(messages=conversations())
def test_encode_chat_matches_transformers_assistant_mask(impl: Any, hf_char: Any,
                                                          messages: list[dict[str, str]]) -> None:
    ids, learn = impl.encode_chat(impl.ChatTokenizer(CharTokenizer(ALPHABET)), messages)
    hf_ids, mask = hf_ids_and_mask(hf_char, messages)
    assert (ids, learn) == (hf_ids, mask), mask_cause(ids, learn, hf_ids, mask)


@given(data=st.data())
def test_gpt2_base_matches_transformers_chat_template(impl: Any, shared_data: Path,
                                                       data: st.DataObject) -> None:
    hf, tok = gpt2_pair(str(shared_data / "gpt2" / "gpt2.tiktoken"))
    messages = data.draw(conversations(None), label="messages")
    prompt = data.draw(st.booleans(), label="add_generation_prompt")
    text = impl.render(messages, add_generation_prompt=prompt)
    assert text == hf_apply(hf, messages, tokenize=False, add_generation_prompt=prompt)
    chat = impl.ChatTokenizer(tok)
    assert chat.encode(text) == list(hf(text, add_special_tokens=False)["input_ids"])
    assert impl.encode_chat(chat, messages) == hf_ids_and_mask(hf, messages)


@pytest.mark.parametrize("base_name", BASES)
@given(data=st.data())
def test_chat_tokenizer_roundtrip_and_one_id_per_special(
    impl: Any, base_name: str, request: pytest.FixtureRequest, data: st.DataObject
) -> None:
    base = load_base(request, base_name)
    tok = impl.ChatTokenizer(base)
    pieces = data.draw(st.lists(st.one_of(contents(base_alphabet(base)),
                                          st.sampled_from(SPECIALS)), max_size=6), label="pieces")
    text = "".join(pieces)
    ids = tok.encode(text)
    assert tok.decode(ids) == text, "decode(encode(text)) must give the text back"
    for i, special in enumerate(SPECIALS):
        sid = base.vocab_size + i
        assert tok.encode(special) == [sid], f"{special!r} must be the one id {sid}"
        assert ids.count(sid) == text.count(special), f"{special!r} must be one id each time"


@pytest.mark.parametrize("base_name", BASES)
@given(data=st.data())
def test_text_between_specials_encodes_as_the_base_tokenizer(
    impl: Any, base_name: str, request: pytest.FixtureRequest, data: st.DataObject
) -> None:
    """Pieces of text (never a special string) alternate with special strings; the ids are the
    base's ids of each piece alone and the specials' ids."""
    base = load_base(request, base_name)
    tok = impl.ChatTokenizer(base)
    n = data.draw(st.integers(0, 4), label="specials")
    texts = data.draw(st.lists(contents(base_alphabet(base)), min_size=n + 1, max_size=n + 1),
                      label="texts")
    specials = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n), label="specials")
    text, expected = texts[0], list(base.encode(texts[0]) if texts[0] else [])
    for s, piece in zip(specials, texts[1:], strict=True):
        text += SPECIALS[s] + piece
        expected += [base.vocab_size + s, *(base.encode(piece) if piece else [])]
    assert tok.encode(text) == expected


@pytest.mark.parametrize("base_name", BASES)
def test_existing_ids_keep_their_meaning(impl: Any, base_name: str,
                                        request: pytest.FixtureRequest) -> None:
    base = load_base(request, base_name)
    tok = impl.ChatTokenizer(base)
    assert tok.vocab_size == base.vocab_size + 4
    assert tok.eot_id == base.vocab_size + 3, "generation stops at <|end|>"
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, base.vocab_size, (2000,), generator=g).tolist()
    assert [tok.decode_bytes([i]) for i in ids] == [base.decode_bytes([i]) for i in ids]
    text = base.decode(ids[:200]) if isinstance(base, CharTokenizer) else BPE_TEXT[:300]
    assert tok.encode(text) == base.encode(text), "text without specials: the base's ids"


@pytest.mark.parametrize("base_name", BASES)
@given(data=st.data())
def test_training_prompt_equals_the_inference_prompt(
    impl: Any, base_name: str, request: pytest.FixtureRequest, data: st.DataObject
) -> None:
    base = load_base(request, base_name)
    tok = impl.ChatTokenizer(base)
    # the turns before the answer are the prompt: system and user turns (earlier assistant
    # turns are learned too, see the assistant-mask test)
    messages = data.draw(conversations(base_alphabet(base), last="assistant",
                                       roles=("system", "user")), label="messages")
    ids, learn = impl.encode_chat(tok, messages)
    assert ids == tok.encode(impl.render(messages)), "training ids are the rendered text's"
    prompt = tok.encode(impl.render(messages[:-1], add_generation_prompt=True)) \
        if len(messages) > 1 else [tok.special_ids["<|assistant|>"]]
    assert ids[: len(prompt)] == prompt, "the training example must start with the inference prompt"
    assert not any(learn[: len(prompt)]), "no loss on the prompt"
    assert all(learn[len(prompt):]), "the whole answer and its <|end|> are learned"
    assert ids[-1] == tok.eot_id


def test_chat_template_rejects_bad_messages(impl: Any) -> None:
    tok = impl.ChatTokenizer(CharTokenizer("ab"))
    assert impl.encode_chat(tok, [{"role": "user", "content": "ab"}])[0] == [3, 0, 1, 5]
    with pytest.raises(ValueError, match=r"messages\[1\].*'bot'"):
        impl.render([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}])
    with pytest.raises(ValueError, match=r"messages\[0\].*special token '<\|end\|>'"):
        impl.encode_chat(tok, [{"role": "user", "content": "a<|end|>"}])
    with pytest.raises(ValueError, match="at least one message"):
        impl.render([], add_generation_prompt=True)
    with pytest.raises(ValueError, match="already has the chat tokens"):
        impl.ChatTokenizer(tok)


# --- the rest: SFT batches and losses, sequence log-probabilities, DPO ---------------------------


@given(data=st.data())
def test_sft_targets_shift_and_mask_the_next_token(impl: Any, data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 12), label="length")
    ids = data.draw(st.lists(st.integers(0, 50), min_size=n, max_size=n), label="ids")
    learn = data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="learn")
    x, y = impl.sft_targets(ids, learn)
    assert x == ids[:-1]
    assert y == [ids[t + 1] if learn[t + 1] else -1 for t in range(n - 1)]


def test_sft_loss_is_cross_entropy_over_the_assistant_tokens_only(impl: Any, hf_char: Any) -> None:
    messages = [{"role": "system", "content": "be terse"}, {"role": "user", "content": "abc"},
                {"role": "assistant", "content": "cba!"}, {"role": "user", "content": "xyz"},
                {"role": "assistant", "content": "zyx"}]
    hf_ids, mask = hf_ids_and_mask(hf_char, messages)
    tok = impl.ChatTokenizer(CharTokenizer(ALPHABET))
    model = tiny_gpt(tok.vocab_size)
    x, y = impl.sft_batch([impl.encode_chat(tok, messages)], pad_id=0)
    logits, loss = model(x, y)
    assert loss is not None
    expected = response_loss(logits[0], hf_ids, mask)
    assert_close(loss, expected, "the SFT loss vs cross-entropy over the assistant's tokens")


def test_sft_batch_padding_never_changes_real_logits_or_the_loss(impl: Any) -> None:
    g = torch.Generator().manual_seed(3)
    examples = []
    for n in (9, 3, 14, 6):
        ids = torch.randint(0, 20, (n,), generator=g).tolist()
        learn = (torch.rand(n, generator=g) < 0.5).tolist()
        learn[-1] = True  # every example has a learned token
        examples.append((ids, learn))
    model = tiny_gpt(20)
    x, y = impl.sft_batch(examples, pad_id=0)
    assert tuple(x.shape) == tuple(y.shape) == (4, 13)
    logits, loss = model(x, y)
    assert loss is not None
    for b, (ids, _) in enumerate(examples):
        alone, _ = model(torch.tensor([ids[:-1]]))
        assert_close(logits[b, : len(ids) - 1], alone[0], f"row {b}'s real logits vs the example alone")
        assert (y[b, len(ids) - 1:] == -1).all(), f"row {b}: padding must carry no loss"
    every = [(b, t) for b, (ids, learn) in enumerate(examples) for t in range(1, len(ids)) if learn[t]]
    expected = F.cross_entropy(torch.stack([logits[b, t - 1] for b, t in every]),
                               torch.tensor([examples[b][0][t] for b, t in every]))
    assert_close(loss, expected, "the batch loss vs cross-entropy over every learned token")


def test_sft_rejects_bad_examples(impl: Any) -> None:
    assert impl.sft_targets([1, 2], [False, True]) == ([1], [2])
    with pytest.raises(ValueError, match="3 ids and 2 flags"):
        impl.sft_targets([1, 2, 3], [True, True])
    with pytest.raises(ValueError, match=r"at least 2 ids.*1 ids"):
        impl.sft_targets([1], [True])
    with pytest.raises(ValueError, match="at least one example"):
        impl.sft_batch([], pad_id=0)
    with pytest.raises(ValueError, match=r"pad_id.*-1"):
        impl.sft_batch([([1, 2], [True, True])], pad_id=-1)


@given(data=st.data())
def test_sequence_logprob_matches_float64_log_softmax_gather(impl: Any, data: st.DataObject) -> None:
    b, t, v = (data.draw(st.integers(1, n), label=k) for n, k in ((3, "B"), (8, "T"), (7, "V")))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]), label="dtype")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    logits = (torch.randn(b, t, v, generator=g, dtype=torch.float64) * 3).to(dtype)
    targets = torch.randint(0, v, (b, t), generator=g)
    targets[torch.rand(b, t, generator=g) < 0.4] = -1
    out = impl.sequence_logprob(logits, targets)
    want = torch.float64 if dtype == torch.float64 else torch.float32
    assert_close(out, oracle_logprob(logits, targets).to(want), f"sequence_logprob ({dtype})")


def test_sequence_logprob_validates_its_inputs(impl: Any) -> None:
    assert impl.sequence_logprob(torch.zeros(1, 1, 2), torch.tensor([[1]])).shape == (1,)
    with pytest.raises(ValueError, match=r"logits must be float \(B, T, V\), got \(2, 3\)"):
        impl.sequence_logprob(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must be integer ids of shape \(2, 3\).*\(2, 4\)"):
        impl.sequence_logprob(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


@given(data=st.data())
def test_dpo_loss_matches_the_papers_formula(impl: Any, data: st.DataObject) -> None:
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    b = data.draw(st.integers(1, 5), label="B")
    beta = data.draw(st.sampled_from([0.01, 0.1, 0.5, 1.0, 3.0]), label="beta")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    pc, pr, rc, rr = (-torch.rand(b, generator=g, dtype=torch.float64) * 20 for _ in range(4))
    loss = impl.dpo_loss(pc.to(dtype), pr.to(dtype), rc.to(dtype), rr.to(dtype), beta=beta)
    cast = [x.to(dtype).double().tolist() for x in (pc, pr, rc, rr)]
    expected = sum(formula(*row, beta) for row in zip(*cast, strict=True)) / b
    assert_close(loss, torch.tensor(expected, dtype=dtype), f"DPO loss (β = {beta}, {dtype})")


def test_a_dpo_step_prefers_the_chosen_response(impl: Any) -> None:
    policy = tiny_gpt(12, seed=2).train()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    prompt = [1, 2, 3]
    chosen = impl.sft_batch([([*prompt, 4, 5, 11], [False] * 3 + [True] * 3)], pad_id=0)
    rejected = impl.sft_batch([([*prompt, 6, 7, 8, 11], [False] * 3 + [True] * 4)], pad_id=0)

    def margin(model: GPT) -> Tensor:
        lp = [impl.sequence_logprob(model(x)[0], y) for x, y in (chosen, rejected)]
        return lp[0] - lp[1]

    with torch.no_grad():
        ref_c, ref_r = (impl.sequence_logprob(reference(x)[0], y) for x, y in (chosen, rejected))
        before = margin(policy)
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    for _ in range(3):
        pc, pr = (impl.sequence_logprob(policy(x)[0], y) for x, y in (chosen, rejected))
        loss = impl.dpo_loss(pc, pr, ref_c, ref_r, beta=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = margin(policy)
    assert after.item() > before.item() + 0.1, f"margin {before.item():.3f} -> {after.item():.3f}"


def test_dpo_loss_validates_its_inputs(impl: Any) -> None:
    one = torch.zeros(2)
    assert_close(impl.dpo_loss(one, one, one, one), torch.tensor(math.log(2.0)), "m = 0")
    for beta in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match=f"beta must be.*> 0, got {beta}"):
            impl.dpo_loss(one, one, one, one, beta=beta)
    with pytest.raises(ValueError, match=r"all be \(B,\).*\(3,\)"):
        impl.dpo_loss(one, one, torch.zeros(3), one)
    with pytest.raises(ValueError, match=r"all be \(B,\).*\(2, 1\)"):
        impl.dpo_loss(*(torch.zeros(2, 1) for _ in range(4)))
