# ruff: noqa: E501 -- the rows of the contract table are one line each
"""Spec: evaluation (issue 14): sliding-window perplexity, bits per byte, multiple choice, ECE.

Conventions: a text of N tokens has N - 1 predictions (the token at p + 1 from the tokens up to
p). Window k feeds the tokens [b, e), b = k * stride, e = min(b + context, N - 1), and scores
the predictions not scored before; Hugging Face's documented loop ("Perplexity of fixed-length
models") with ``max_length = context + 1`` (its window holds the target too) scores the same
tokens in the same windows. NLLs are in nats; bits per byte = nll / ln 2 / UTF-8 bytes.
``acc_norm`` divides by the characters of the choice (lm-eval's definition), never its tokens.
ECE = sum over equal-width bins of count / N * |accuracy - confidence|.

Contract:

| clause | tests | oracle |
|---|---|---|
| the windows: hand-worked layout; scored ranges disjoint, covering every prediction once, at most `context` tokens each, window k at k * stride | `test_windows_hand_worked`, `test_windows_score_every_prediction_once` | hand-worked; property |
| token NLLs: the logits at t predict the token at t + 1, float64, positions in the window | `test_token_nlls_hand_worked_bigram`, `test_token_nlls_match_cross_entropy_on_one_window` | hand-worked (log 1/4, log 3/4); `F.cross_entropy` |
| token NLLs and perplexity equal Hugging Face's documented sliding window on a GPT2LMHeadModel with the same weights, any length, context, stride, batch size (1e-5 relative) | `test_token_nlls_match_hugging_face_sliding_window`, `test_perplexity_matches_hugging_face_loop_on_a_long_text` | `transformers.GPT2LMHeadModel` + the HF doc loop (labels -100, per-token count) |
| stride = context is the non-overlapping sum; the defaults are context = block_size, stride = context | `test_stride_equal_to_context_is_the_non_overlapping_sum` | `F.cross_entropy` over disjoint chunks |
| a uniform model's perplexity is the vocabulary size, whatever context and stride; its bits per byte are tokens * log2 V / bytes | `test_uniform_model_perplexity_is_the_vocabulary_size` | math (a GPT with its head zeroed) |
| Perplexity: ppl = exp(nll / tokens), bits per byte = nll / ln 2 / bytes, word ppl = exp(nll / words); bytes and words from the text (UTF-8); NaN without them; describe() states context and stride | `test_perplexity_figures_hand_worked`, `test_perplexity_counts_bytes_and_words_of_the_text`, `test_perplexity_without_text_or_tokens_is_nan` | hand-worked |
| bad windows raise, naming the value | `test_bad_context_or_stride_raise` | the documented errors |
| loglikelihood: the continuation's log-probability after the context, cut on the left to block_size + 1 tokens; is_greedy | `test_loglikelihood_hand_worked_bigram`, `test_loglikelihood_matches_cross_entropy_with_left_truncation` | hand-worked; `F.cross_entropy` |
| multiple choice: acc picks the highest summed log-likelihood, acc_norm the highest per character (not per token); they differ on a constructed case | `test_choose_hand_worked`, `test_multiple_choice_picks_the_known_answer`, `test_length_normalisation_by_characters_changes_the_pick` | hand-worked (a bigram model and a word-piece tokenizer) |
| calibration: bins, counts, edges, mean confidence and accuracy per bin, NaN when empty; ECE weighted by counts; a perfectly calibrated predictor ~0, a constant over-confident one its known gap | `test_calibration_hand_worked_bins`, `test_overconfident_predictor_has_the_known_ece`, `test_calibrated_predictor_has_ece_near_zero` | hand-worked; sampling error of a synthetic predictor |

Tolerances: per-token NLLs from float32 logits: 1e-5 absolute (O(1) values); sums: 1e-5
relative; quantities computed exactly (counts, windows, a uniform model's NLL in float64): 1e-9.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from reference.hf import config_to_hf, to_hf_state_dict
from reference.model import GPT, GPTConfig
from specs import hints

COMPONENT = "evaluation"
pytestmark = pytest.mark.evaluation

import transformers  # noqa: E402  # the oracle: a dev dependency, never skipped

BLOCK = 16
VOCAB = 50


class Bigram(nn.Module):
    """A hand-set bigram model: logits[b, t] = table[idx[b, t]] (rows are log-probabilities)."""

    def __init__(self, table: Tensor, block_size: int = BLOCK) -> None:
        super().__init__()
        self.table = nn.Parameter(table.float())
        self.config = SimpleNamespace(block_size=block_size)

    def forward(self, idx: Tensor) -> tuple[Tensor, None]:
        return self.table[idx], None  # (B, T, V)


class Pieces:
    """A tokenizer over whole pieces: greedy longest match (only ``encode`` is used)."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def encode(self, text: str) -> list[int]:
        ids = []
        while text:
            i = max((i for i, p in enumerate(self.pieces) if text.startswith(p)),
                    key=lambda i: len(self.pieces[i]))
            ids.append(i)
            text = text[len(self.pieces[i]):]
        return ids


def random_gpt(seed: int = 0, block_size: int = BLOCK) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=VOCAB, n_layer=2, n_head=2,
                          n_embd=32))
    with torch.no_grad():  # GPT-2's init zeroes the biases: random ones catch more
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def gpt_and_hf() -> tuple[GPT, Any]:
    """Our GPT and a GPT2LMHeadModel with the same weights, one position longer (HF's window
    holds the target too; the extra position's row is never read for a scored prediction)."""
    model = random_gpt()
    hf_config = dict(config_to_hf(model.config), n_positions=BLOCK + 1)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config)).eval()
    state = to_hf_state_dict(model.state_dict())
    wpe = state["transformer.wpe.weight"]
    state["transformer.wpe.weight"] = torch.cat([wpe, torch.randn(1, wpe.size(1))])
    hf.load_state_dict(state, strict=True)
    return model, hf


@torch.no_grad()
def hf_sliding_window(hf: Any, ids: list[int], max_length: int, stride: int
                      ) -> tuple[Tensor, Tensor, float, int]:
    """Hugging Face's documented loop, counting exactly: per-token NLLs (from HF's logits),
    positions, and HF's own ``outputs.loss`` times the tokens it averaged, summed."""
    enc = torch.tensor([ids])
    seq_len = enc.size(1)
    nlls, positions, nll_sum, n_tokens, prev_end = [], [], 0.0, 0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        input_ids = enc[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        out = hf(input_ids, labels=target_ids)
        shifted = target_ids[0, 1:]  # HF shifts the labels inside: logits t predict label t+1
        valid = shifted != -100
        n_valid = int(valid.sum())  # the exact count (the doc's `num_valid - batch_size` is not)
        if n_valid:
            nll_sum += float(out.loss) * n_valid
            n_tokens += n_valid
            per_token = F.cross_entropy(out.logits[0, :-1].double(), shifted.clamp(min=0),
                                        reduction="none")
            nlls.append(per_token[valid])
            positions.append(torch.arange(end - begin - 1)[valid])
        prev_end = end
        if end == seq_len:
            break
    if not nlls:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.long), 0.0, 0
    return torch.cat(nlls), torch.cat(positions), nll_sum, n_tokens


def uniform_gpt(vocab: int, block_size: int = BLOCK) -> GPT:
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab, n_layer=1, n_head=1,
                          n_embd=8))
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied to wte: every logit is exactly 0
    return model.eval()


def cause(value: float, wrong: dict[str, float]) -> str:
    """``"likely cause: ...; "`` for the classic bug whose figure ``value`` matches, else ``""``."""
    found = hints.likely(torch.tensor(value, dtype=torch.float64),
                         {k: torch.tensor(v, dtype=torch.float64) for k, v in wrong.items()})
    return f"{found}; " if found else ""


def lp(*probs: float) -> Tensor:
    """A row of log-probabilities."""
    assert abs(sum(probs) - 1) < 1e-12
    return torch.tensor([math.log(p) for p in probs])


# --- exact: hand-worked numbers and fixed cases ----------------------------------------------


def test_windows_hand_worked(impl: Any) -> None:
    got = impl.windows(10, 4, 2)
    why = ""
    if got == [(0, 4, 0), (4, 8, 4), (8, 9, 8)]:
        why = ("likely cause: the windows are disjoint whatever the stride: window k begins at "
               "k * stride, so they overlap when stride < context; ")
    elif got and got[-1][1] == 10:
        why = ("likely cause: the windows run to N: N tokens make N - 1 predictions, so the "
               "last window ends at N - 1 (the last token predicts nothing); ")
    assert got == [(0, 4, 0), (2, 6, 4), (4, 8, 6), (6, 9, 8)], f"{why}windows(10, 4, 2) = {got}"
    assert impl.windows(10, 4, 4) == [(0, 4, 0), (4, 8, 4), (8, 9, 8)]
    assert impl.windows(10, 4, 1) == [(0, 4, 0), (1, 5, 4), (2, 6, 5), (3, 7, 6), (4, 8, 7),
                                      (5, 9, 8)]
    assert impl.windows(2, 4, 4) == [(0, 1, 0)]
    assert impl.windows(1, 4, 4) == [] and impl.windows(0, 4, 4) == []


def test_token_nlls_hand_worked_bigram(impl: Any) -> None:
    """ids [0, 1, 0, 2]: -log p(1|0), -log p(0|1), -log p(2|0) from a hand-set table."""
    table = torch.stack([lp(1 / 8, 3 / 4, 1 / 16, 1 / 16), lp(1 / 2, 1 / 4, 1 / 8, 1 / 8),
                         lp(1 / 4, 1 / 4, 1 / 4, 1 / 4), lp(1 / 4, 1 / 4, 1 / 4, 1 / 4)])
    nll, pos = impl.token_nlls(Bigram(table, block_size=2), [0, 1, 0, 2], context=2, stride=1)
    want = torch.tensor([-math.log(3 / 4), -math.log(1 / 2), -math.log(1 / 16)], dtype=torch.float64)
    assert nll.dtype == torch.float64, f"token NLLs must be float64, got {nll.dtype}"
    hints.assert_close(nll, want, what="token NLLs of [0, 1, 0, 2]", wrong={
        # each token scored as a prediction of itself: -log p(0|0), -log p(1|1), -log p(0|0)
        "the targets are not shifted: the logits at t predict the token at t + 1 "
        "(targets ids[1:])": torch.tensor([math.log(8), math.log(4), math.log(8)],
                                          dtype=torch.float64),
        # -log p(0|0), -log p(2|1): two positions ahead, and one prediction short
        "the targets are shifted by two: the logits at t predict the token at t + 1":
            torch.tensor([math.log(8), math.log(8)], dtype=torch.float64),
        # window 2 scores its first prediction again: -log p(0|1) twice
        "the overlap is scored again: each window scores only the predictions from `first` on, "
        "the ones no earlier window scored": torch.tensor(
            [-math.log(3 / 4), -math.log(1 / 2), -math.log(1 / 2), -math.log(1 / 16)],
            dtype=torch.float64),
    }, atol=1e-6, rtol=0)  # float32 table: ~1e-7
    why = ("likely cause: the stride is ignored (windows of stride = context): window k begins "
           "at k * stride, and positions count from its start; " if pos.tolist() == [0, 1, 0]
           else "")
    assert pos.tolist() == [0, 1, 1], f"{why}positions {pos.tolist()}, want [0, 1, 1]"


def test_token_nlls_match_cross_entropy_on_one_window(impl: Any) -> None:
    model = random_gpt(1)
    ids = torch.randint(0, VOCAB, (BLOCK + 1,), generator=torch.Generator().manual_seed(3))
    nll, pos = impl.token_nlls(model, ids.tolist())
    with torch.no_grad():
        logits, _ = model(ids[None, :-1])
    want = F.cross_entropy(logits[0].double(), ids[1:], reduction="none")
    torch.testing.assert_close(nll, want, atol=1e-5, rtol=0)
    assert pos.tolist() == list(range(BLOCK))


def test_perplexity_figures_hand_worked(impl: Any) -> None:
    """nll = 3 ln 2 nats over 3 tokens, a 6-byte text of 2 words."""
    p = impl.Perplexity(nll=3 * math.log(2), tokens=3, bytes=6, words=2, context=8, stride=4)
    ln2 = math.log(2)
    why = cause(p.ppl, {"the perplexity in base 2: ppl = exp(nll / tokens), the NLLs are in "
                        "nats": 2 ** ln2})
    assert math.isclose(p.ppl, 2.0, rel_tol=1e-12), f"{why}ppl {p.ppl}, want exp(ln 2) = 2"
    why = cause(p.bits_per_byte, {
        "bits per byte left in nats: divide by ln 2, nll / ln 2 / bytes": 3 * ln2 / 6,
        "multiplied by ln 2: bits = nats / ln 2": 3 * ln2 * ln2 / 6,
    })
    assert math.isclose(p.bits_per_byte, 0.5, rel_tol=1e-12), (
        f"{why}bits/byte {p.bits_per_byte}, want 3 bits / 6 bytes = 0.5 (nats / ln 2)")
    why = cause(p.word_ppl, {"word perplexity divided by the tokens: exp(nll / words)": 2.0})
    assert math.isclose(p.word_ppl, 2 ** 1.5, rel_tol=1e-12), f"{why}word ppl {p.word_ppl}"
    assert "context 8" in p.describe() and "stride 4" in p.describe(), p.describe()


def test_perplexity_counts_bytes_and_words_of_the_text(impl: Any) -> None:
    text = "héllo wörld  ok\n"  # 16 characters, 18 UTF-8 bytes, 3 words
    p = impl.perplexity(uniform_gpt(8), [1, 2, 3, 4, 5], text=text)
    why = ("likely cause: the characters are counted, not the UTF-8 bytes: "
           "len(text.encode()); " if p.bytes == len(text) else "")
    assert (p.bytes, p.words, p.tokens) == (18, 3, 4), f"{why}{(p.bytes, p.words, p.tokens)}"
    assert math.isclose(p.bits_per_byte, 4 * 3 / 18, rel_tol=1e-9), p.bits_per_byte  # 3 bits/token
    assert math.isclose(p.word_ppl, math.exp(4 * math.log(8) / 3), rel_tol=1e-9), p.word_ppl


def test_perplexity_without_text_or_tokens_is_nan(impl: Any) -> None:
    p = impl.perplexity(uniform_gpt(8), [1, 2, 3])
    assert (p.bytes, p.words) == (0, 0)
    assert math.isnan(p.bits_per_byte) and math.isnan(p.word_ppl)
    one = impl.perplexity(uniform_gpt(8), [1], text="a")
    assert one.tokens == 0 and one.nll == 0 and math.isnan(one.ppl)


def test_bad_context_or_stride_raise(impl: Any) -> None:
    model = uniform_gpt(8)
    assert impl.perplexity(model, [1, 2, 3], context=2, stride=1).tokens == 2  # the edges are fine
    for kwargs, named in [({"context": BLOCK + 1}, str(BLOCK + 1)), ({"context": 0}, "0"),
                          ({"context": 4, "stride": 5}, "5"), ({"stride": 0}, "0")]:
        with pytest.raises(ValueError, match=named):
            impl.perplexity(model, [1, 2, 3], **kwargs)


def test_perplexity_matches_hugging_face_loop_on_a_long_text(impl: Any, gpt_and_hf: Any) -> None:
    """Windows that score different numbers of tokens: a mean of window means is wrong here."""
    model, hf = gpt_and_hf
    ids = torch.randint(0, VOCAB, (100,), generator=torch.Generator().manual_seed(5)).tolist()
    for context, stride in [(BLOCK, 5), (BLOCK, BLOCK), (7, 3), (BLOCK - 1, 1)]:
        nlls, positions, hf_sum, hf_tokens = hf_sliding_window(hf, ids, context + 1, stride)
        p = impl.perplexity(model, ids, context=context, stride=stride)
        why = ""
        if p.tokens < hf_tokens:
            why = ("likely cause: predictions are lost at the window boundaries: each window "
                   "scores from `first`, the first prediction no earlier window scored; ")
        elif p.tokens > hf_tokens:
            why = "likely cause: the overlap is scored again, from each window's start; "
        assert (p.tokens, p.context, p.stride) == (hf_tokens, context, stride) == (99, context, stride), (
            f"{why}(tokens, context, stride) = {(p.tokens, p.context, p.stride)}")
        # a new window starts where the position does not grow
        starts = [0, *(i for i in range(1, len(positions)) if positions[i] <= positions[i - 1]),
                  len(positions)]
        means = [float(nlls[a:b].mean()) for a, b in itertools.pairwise(starts)]
        why = cause(p.nll, {"the windows' mean NLLs are averaged: windows score different "
                            "numbers of tokens; sum the token NLLs, divide by their count":
                            sum(means) / len(means) * hf_tokens})
        assert math.isclose(p.nll, hf_sum, rel_tol=1e-5), (
            f"{why}context {context}, stride {stride}: nll {p.nll}, HF's loop {hf_sum}")
        assert math.isclose(p.ppl, math.exp(hf_sum / hf_tokens), rel_tol=1e-5)


def test_stride_equal_to_context_is_the_non_overlapping_sum(impl: Any) -> None:
    model = random_gpt(2)
    ids = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(7))
    want = 0.0
    with torch.no_grad():
        for b in range(0, 39, BLOCK):  # disjoint chunks of the 39 (input, target) pairs
            x, y = ids[b:min(b + BLOCK, 39)], ids[b + 1:min(b + BLOCK, 39) + 1]
            want += float(F.cross_entropy(model(x[None])[0][0].double(), y, reduction="sum"))
    default = impl.perplexity(model, ids.tolist())
    explicit = impl.perplexity(model, ids.tolist(), context=BLOCK, stride=BLOCK)
    for p in (default, explicit):
        assert (p.context, p.stride, p.tokens) == (BLOCK, BLOCK, 39)
        assert math.isclose(p.nll, want, rel_tol=1e-5), f"nll {p.nll}, disjoint sum {want}"


def test_loglikelihood_hand_worked_bigram(impl: Any) -> None:
    table = torch.stack([lp(1 / 8, 1 / 2, 1 / 4, 1 / 8), lp(1 / 4, 1 / 4, 1 / 4, 1 / 4),
                         lp(1 / 8, 1 / 8, 1 / 8, 5 / 8), lp(1 / 4, 1 / 4, 1 / 4, 1 / 4)])
    model = Bigram(table, block_size=4)
    ll, greedy = impl.loglikelihood(model, [3, 0], [1, 2])  # p(1|0) p(2|1) = 1/2 * 1/4
    why = cause(ll, {"the model reads the last continuation token too: feed context + "
                     "continuation[:-1], the logits at t score the token at t + 1":
                     math.log(1 / 4) + math.log(1 / 8)})  # p(1|1) p(2|2): one step late
    assert math.isclose(ll, math.log(1 / 8), abs_tol=1e-6), f"{why}{ll}"  # float32 table
    assert greedy is False  # p(2|1) = 1/4 ties, and the argmax is token 0
    ll, greedy = impl.loglikelihood(model, [0], [1])
    assert math.isclose(ll, math.log(1 / 2), abs_tol=1e-6) and greedy is True
    ll, greedy = impl.loglikelihood(model, [2], [3])
    assert math.isclose(ll, math.log(5 / 8), abs_tol=1e-6) and greedy is True


def test_loglikelihood_matches_cross_entropy_with_left_truncation(impl: Any) -> None:
    model = random_gpt(4)
    g = torch.Generator().manual_seed(9)
    for n_ctx, n_cont in [(3, 2), (BLOCK - 3, 3), (2 * BLOCK, 5), (1, BLOCK)]:
        ctx = torch.randint(0, VOCAB, (n_ctx,), generator=g)
        cont = torch.randint(0, VOCAB, (n_cont,), generator=g)
        whole = torch.cat([ctx, cont])[-(BLOCK + 1):]
        with torch.no_grad():
            logits, _ = model(whole[None, :-1])
        scored = logits[0, -n_cont:].double()
        want = -float(F.cross_entropy(scored, cont, reduction="sum"))
        ll, greedy = impl.loglikelihood(model, ctx.tolist(), cont.tolist())
        with torch.no_grad():  # cut to block_size tokens: the first target loses its context
            short = torch.cat([ctx, cont])[-BLOCK:]
            cut = -float(F.cross_entropy(model(short[None, :-1])[0][0, -n_cont:].double(),
                                         cont[-(BLOCK - 1):], reduction="sum"))
        why = cause(ll, {"the text is cut to block_size tokens: keep block_size + 1 (the last "
                         "is only a target), so every scored token keeps its full context": cut})
        assert math.isclose(ll, want, rel_tol=1e-5), (
            f"{why}context {n_ctx}, continuation {n_cont}: {ll}, want {want}")
        assert greedy == bool((scored.argmax(-1) == cont).all())


def test_choose_hand_worked(impl: Any) -> None:
    got = impl.choose([-4.0, -2.0], ["aaaa", "b"])  # per character: -1 and -2
    why = ("likely cause: acc_norm picks the lowest: the highest log-likelihood per character "
           "(max, not min); " if got == (1, 1) else "")
    assert got == (1, 0), f"{why}choose([-4, -2], ['aaaa', 'b']) = {got}, want (1, 0)"
    assert impl.choose([-3.0, -3.0, -9.0], ["ab", "cd", "efghijklmn"]) == (0, 2)


def _pieces_model() -> tuple[Bigram, Pieces]:
    """Tokens: 0 "ctx", 1 " ", 2 "aaaa", 3 "b", 4 "a". After "ctx" a space (1/2); after the
    space "aaaa" 1/50, "b" 1/5, "a" 1/10."""
    table = torch.stack([lp(0.125, 0.5, 0.125, 0.125, 0.125), lp(0.225, 0.225, 0.02, 0.2, 0.33),
                         lp(0.2, 0.2, 0.2, 0.2, 0.2), lp(0.2, 0.2, 0.2, 0.2, 0.2),
                         lp(0.2, 0.2, 0.2, 0.2, 0.2)])
    return Bigram(table, block_size=8), Pieces(["ctx", " ", "aaaa", "b", "a"])


def test_multiple_choice_picks_the_known_answer(impl: Any) -> None:
    model, tok = _pieces_model()
    item = impl.MultipleChoice("ctx", ["b", "a"], 1)
    s = impl.score_multiple_choice(model, tok, item)
    want = [math.log(0.5 * 0.2), math.log(0.5 * 0.33)]
    torch.testing.assert_close(torch.tensor(s.loglikelihoods, dtype=torch.float64),
                               torch.tensor(want, dtype=torch.float64), atol=1e-6, rtol=0)
    assert (s.pred, s.pred_norm) == (1, 1), f"the known answer is choice 1: {s}"


def test_length_normalisation_by_characters_changes_the_pick(impl: Any) -> None:
    """ll(" aaaa") = ln(1/100) = -4.61 and ll(" b") = ln(1/10) = -2.30: acc picks "b"; per
    character (-1.15 against -2.30) acc_norm picks "aaaa"; per token (2 each) it would not."""
    model, tok = _pieces_model()
    s = impl.score_multiple_choice(model, tok, impl.MultipleChoice("ctx", ["aaaa", "b"], 0))
    assert s.pred == 1, f"acc must pick the higher summed log-likelihood, got {s}"
    assert s.pred_norm == 0, (
        f"likely cause: acc_norm divides by the tokens: divide by len(choice), the characters, "
        f"not the tokens: {s}")


def test_calibration_hand_worked_bins(impl: Any) -> None:
    """8 predictions at 0.95 all right (gap 0.05) and 2 at 0.15 both right (gap 0.85), one at
    1.0 (last bin) and one at 0.0 (first), 5 bins: weighted by counts, not bin by bin."""
    conf = torch.tensor([0.95] * 8 + [0.15] * 2 + [1.0, 0.0])
    correct = torch.tensor([True] * 10 + [True, False])
    c = impl.calibration(conf, correct, bins=5)
    rounded = torch.bincount((conf * 5).round().long().clamp(max=4), minlength=5).tolist()
    why = ("likely cause: the bins are found by rounding: bin = floor(confidence * bins), "
           "1.0 in the last; " if c.counts == rounded else "")
    assert c.counts == [3, 0, 0, 0, 9], f"{why}counts {c.counts}"
    assert c.edges == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], c.edges
    assert math.isnan(c.confidence[1]) and math.isnan(c.accuracy[2])
    torch.testing.assert_close(torch.tensor([c.confidence[0], c.accuracy[0]]),
                               torch.tensor([0.1, 2 / 3]), atol=1e-7, rtol=0)
    torch.testing.assert_close(torch.tensor([c.confidence[4], c.accuracy[4]]),
                               torch.tensor([(0.95 * 8 + 1) / 9, 1.0]), atol=1e-7, rtol=0)
    want = 3 / 12 * abs(2 / 3 - 0.1) + 9 / 12 * abs(1 - (0.95 * 8 + 1) / 9)
    why = cause(c.ece, {"the bins are weighted equally: weight each bin's gap by its share of "
                        "the predictions, count / N":
                        (abs(2 / 3 - 0.1) + abs(1 - (0.95 * 8 + 1) / 9)) / 2})
    assert math.isclose(c.ece, want, rel_tol=1e-6), f"{why}ECE {c.ece}, want {want}"


def test_overconfident_predictor_has_the_known_ece(impl: Any) -> None:
    c = impl.calibration(torch.full((1000,), 0.9), torch.arange(1000) % 10 < 6)
    assert math.isclose(c.ece, 0.3, rel_tol=1e-6), f"always 0.9 sure, right 60%: ECE 0.3, got {c.ece}"
    assert sum(c.counts) == 1000 and len(c.counts) == 15 and len(c.edges) == 16
    mixed = impl.calibration(torch.tensor([0.1, 0.1, 0.9, 0.9]), torch.tensor([1, 1, 0, 0]))
    why = cause(mixed.ece, {"the gaps are signed, so under- and over-confident bins cancel: "
                            "take |accuracy - confidence|": 0.0})
    assert math.isclose(mixed.ece, 0.9, rel_tol=1e-6), (
        f"{why}under- and over-confident bins: gaps 0.9 each, never cancelling; got {mixed.ece}")


def test_calibrated_predictor_has_ece_near_zero(impl: Any) -> None:
    """Right with probability equal to the confidence: ECE is sampling error only,
    about sqrt(2 / (pi * N / bins)) / 2 ~ 0.004 here; 0.015 is > 3 sigma."""
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(100_000, generator=g, dtype=torch.float64)
    correct = torch.rand(100_000, generator=g, dtype=torch.float64) < conf
    assert impl.calibration(conf, correct).ece < 0.015
    over = impl.calibration(conf.sqrt(), correct)  # the same outcomes, over-confident
    assert over.ece > 0.1, f"an over-confident predictor must have a large ECE, got {over.ece}"


# --- properties --------------------------------------------------------------------------------


@given(n=st.integers(0, 60), context=st.integers(1, 16), data=st.data())
def test_windows_score_every_prediction_once(impl: Any, n: int, context: int, data: Any) -> None:
    stride = data.draw(st.integers(1, context), label="stride")
    spans = impl.windows(n, context, stride)
    scored = [p for _, end, first in spans for p in range(first, end)]
    assert scored == list(range(max(n - 1, 0))), f"windows {spans} do not score 0..{n - 2} once"
    for k, (begin, end, first) in enumerate(spans):
        assert begin == k * stride and begin <= first < end and end - begin <= context, spans


@given(n=st.integers(2, 48), context=st.integers(1, BLOCK), batch_size=st.integers(1, 4),
       data=st.data())
def test_token_nlls_match_hugging_face_sliding_window(
    impl: Any, gpt_and_hf: Any, n: int, context: int, batch_size: int, data: Any
) -> None:
    model, hf = gpt_and_hf
    stride = data.draw(st.integers(1, context), label="stride")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    ids = torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    want, want_pos, hf_sum, hf_tokens = hf_sliding_window(hf, ids, context + 1, stride)
    nll, pos = impl.token_nlls(model, ids, context=context, stride=stride, batch_size=batch_size)
    assert len(nll) == n - 1 == hf_tokens, "every token but the first is scored exactly once"
    torch.testing.assert_close(nll, want, atol=1e-5, rtol=0)
    assert pos.tolist() == want_pos.tolist()
    p = impl.perplexity(model, ids, context=context, stride=stride, batch_size=batch_size)
    assert math.isclose(p.nll, hf_sum, rel_tol=1e-5, abs_tol=1e-6), (p.nll, hf_sum)


@given(vocab=st.integers(2, 40), n=st.integers(2, 40), context=st.integers(1, BLOCK),
       data=st.data())
def test_uniform_model_perplexity_is_the_vocabulary_size(
    impl: Any, vocab: int, n: int, context: int, data: Any
) -> None:
    stride = data.draw(st.integers(1, context), label="stride")
    ids = data.draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n), label="ids")
    text = "x" * data.draw(st.integers(1, 100), label="bytes")
    p = impl.perplexity(uniform_gpt(vocab), ids, text=text, context=context, stride=stride)
    assert p.tokens == n - 1
    assert math.isclose(p.ppl, vocab, rel_tol=1e-9), f"uniform over {vocab}: ppl {p.ppl}"
    assert math.isclose(p.bits_per_byte, (n - 1) * math.log2(vocab) / len(text), rel_tol=1e-9)
