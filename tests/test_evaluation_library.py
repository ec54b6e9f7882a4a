"""The evaluation library beyond the course's spec: next-token calibration, the task files and the
dataset-level scorers (``reference/evaluation``). The spec, ``specs/test_evaluation.py``, checks
the shared functions against Hugging Face; here the library's own additions are checked against
those functions and torch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from reference.evaluation import (
    calibration,
    evaluate_last_word,
    evaluate_multiple_choice,
    loglikelihood,
    next_token_calibration,
    perplexity,
    read_last_word,
    read_multiple_choice,
    score_multiple_choice,
    token_nlls,
)
from reference.evaluation.scorers import (
    split_last_word,
    synthetic_last_word,
    synthetic_multiple_choice,
    write_jsonl,
)
from reference.model import GPT, GPTConfig
from reference.tokenizers import CharTokenizer

pytestmark = pytest.mark.evaluation


def tiny_gpt(vocab: int, seed: int = 0, block_size: int = 16) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=block_size, vocab_size=vocab, n_layer=1, n_head=2,
                         n_embd=16)).eval()


def test_next_token_calibration_equals_calibration_of_top1() -> None:
    model = tiny_gpt(20)
    ids = torch.randint(0, 20, (40,), generator=torch.Generator().manual_seed(1))
    confs, hits = [], []
    with torch.no_grad():
        for b in range(0, 39, 16):
            e = min(b + 16, 39)
            probs = model(ids[None, b:e])[0][0].double().softmax(-1)
            confs.append(probs.max(-1).values)
            hits.append(probs.argmax(-1) == ids[b + 1:e + 1])
    want = calibration(torch.cat(confs), torch.cat(hits), bins=10)
    got = next_token_calibration(model, ids.tolist(), bins=10)
    assert got.counts == want.counts and sum(got.counts) == 39
    assert math.isclose(got.ece, want.ece, rel_tol=1e-9)


def test_calibration_validates_its_inputs() -> None:
    with pytest.raises(ValueError, match="bins"):
        calibration(torch.ones(2), torch.ones(2), bins=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration(torch.tensor([1.5]), torch.ones(1))
    with pytest.raises(ValueError, match="3 and 2"):
        calibration(torch.ones(3) / 2, torch.ones(2))


def test_token_nlls_do_not_depend_on_the_batch_size() -> None:
    model = tiny_gpt(30)
    ids = torch.randint(0, 30, (70,), generator=torch.Generator().manual_seed(2)).tolist()
    one, pos_one = token_nlls(model, ids, context=12, stride=5, batch_size=1)
    many, pos_many = token_nlls(model, ids, context=12, stride=5, batch_size=64)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=0)  # batched matmuls: float32 rounding
    assert pos_one.tolist() == pos_many.tolist()
    with pytest.raises(ValueError, match="batch_size"):
        token_nlls(model, ids, batch_size=0)


def test_describe_states_context_and_stride() -> None:
    p = perplexity(tiny_gpt(30), list(range(30)), text="a b", context=8, stride=4)
    assert "context 8, stride 4" in p.describe() and "29 tokens" in p.describe()


def test_task_files_round_trip_and_name_bad_records(tmp_path: Path) -> None:
    items = read_multiple_choice(write_jsonl(tmp_path / "mc.jsonl", synthetic_multiple_choice(5)))
    assert len(items) == 5 and all(0 <= it.label < len(it.choices) for it in items)
    texts = read_last_word(write_jsonl(tmp_path / "lw.jsonl", synthetic_last_word(4)))
    assert len(texts) == 4 and all(len(t.split()) == 4 for t in texts)
    write_jsonl(tmp_path / "bad.jsonl", [{"context": "a", "choices": ["b"], "label": 3}])
    with pytest.raises(ValueError, match="record 1: label 3"):
        read_multiple_choice(tmp_path / "bad.jsonl")
    (tmp_path / "junk.jsonl").write_text('{"text": "a b"}\nnot json\n')
    with pytest.raises(ValueError, match=r"junk\.jsonl:2"):
        read_last_word(tmp_path / "junk.jsonl")
    write_jsonl(tmp_path / "one.jsonl", [{"text": "single"}])
    with pytest.raises(ValueError, match="two words"):
        read_last_word(tmp_path / "one.jsonl")


def test_evaluate_multiple_choice_averages_the_item_picks(tmp_path: Path) -> None:
    tok = CharTokenizer("abcd ")
    model = tiny_gpt(tok.vocab_size, seed=3)
    items = read_multiple_choice(
        write_jsonl(tmp_path / "mc.jsonl", synthetic_multiple_choice(12, seed=1)))
    result = evaluate_multiple_choice(model, tok, items)
    picks = [score_multiple_choice(model, tok, it) for it in items]
    assert result.n == 12 and result.scores == picks
    assert result.acc == sum(p.pred == it.label for p, it in zip(picks, items, strict=True)) / 12
    assert result.acc_norm == sum(
        p.pred_norm == it.label for p, it in zip(picks, items, strict=True)) / 12


def test_evaluate_last_word_is_lambada_acc_and_perplexity() -> None:
    tok = CharTokenizer("abcd ")
    model = tiny_gpt(tok.vocab_size, seed=4)
    texts = [r["text"] for r in synthetic_last_word(10, seed=2)]
    result = evaluate_last_word(model, tok, texts)
    scored = [loglikelihood(model, tok.encode(c), tok.encode(t))
              for c, t in map(split_last_word, texts)]
    assert result.acc == sum(g for _, g in scored) / 10
    assert math.isclose(result.perplexity, math.exp(-sum(ll for ll, _ in scored) / 10),
                        rel_tol=1e-12)
    assert split_last_word("x  y z ") == ("x  y", " z")
