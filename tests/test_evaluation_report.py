"""The evaluation report (``python -m reference evaluate``) and its qualitative and error analysis
(``reference.evaluation.analysis``).

Oracles: the inference path's own ``generate`` (the samples are its tokens), torch's
``log_softmax`` (a sample's log-probability), the perplexity module's figures on the run's
validation split (the report prints them), Pillow (the PNGs are PNGs of the stated size), and
hand-written outputs for each failure predicate.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from reference import bpe, cli
from reference.evaluation.analysis import (
    CATEGORIES,
    distinct_n,
    draw_samples,
    early_end,
    error_analysis,
    failures,
    invalid_utf8,
    mean_logprob,
    out_of_distribution,
    prompt_echo,
    repetition_loop,
    repetition_rate,
    truncated_at_context,
)
from reference.evaluation.perplexity import perplexity
from reference.generate import generate
from reference.inference import load
from reference.model import GPT, GPTConfig
from reference.tokenizers import BPETokenizer, CharTokenizer
from reference.trainer.data import load_token_data
from tests.runs import tiny_char_run

SECTIONS = ["## Summary", "## Loss curves", "## Perplexity by position in the context",
            "## Calibration of next-token probabilities", "## Samples", "## Error analysis"]
QUICK = ["--max-new-tokens", "12", "--temperature", "0.8", "--temperature", "1.0",
         "--seed", "0", "--seed", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny character-level run with two evaluations in its metrics log (a few seconds)."""
    return tiny_char_run(tmp_path_factory.mktemp("evalrun"))


@pytest.fixture(scope="module")
def report(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert cli.main(["evaluate", str(run), "--out", str(out), *QUICK]) == 0
    return out


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


# ---------------------------------------------------------------- the command


def test_evaluate_writes_markdown_html_and_plots(report: Path) -> None:
    assert _png_size(report / "loss_curves.png") == (700, 400)
    assert _png_size(report / "ppl_by_position.png") == (700, 400)
    assert _png_size(report / "calibration.png") == (600, 650)
    md = (report / "report.md").read_text(encoding="utf-8")
    positions = [md.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    for png in ("loss_curves.png", "ppl_by_position.png", "calibration.png"):
        assert f"]({png})" in md
    page = (report / "report.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 3  # self-contained: embedded plots
    assert "http://" not in page and "https://" not in page  # no CDN
    for s in SECTIONS:
        assert f"<h2>{s[3:]}</h2>" in page


def test_report_figures_are_the_perplexity_of_the_validation_split(run: Path,
                                                                   report: Path) -> None:
    data = load_token_data(run / "data")
    text = data.tokenizer().decode(data.split("val").tolist())
    loaded = load(run)
    expected = perplexity(loaded.model, loaded.tokenizer.encode(text), text=text)
    md = (report / "report.md").read_text(encoding="utf-8")
    assert f"| perplexity | {expected.ppl:.4f} |" in md
    assert f"| bits per byte | {expected.bits_per_byte:.4f} |" in md
    assert f"| context, stride | {expected.context}, {expected.stride} |" in md
    assert expected.describe() in md
    assert f"validation split of {run / 'data'}" in md
    # the loss curve's evaluations from metrics.jsonl: steps 4 and 8
    assert re.search(r"\| run \| 4 \| [\d.]+ \| [\d.]+ \|", md)
    assert re.search(r"\| run \| 8 \| [\d.]+ \| [\d.]+ \|", md)
    # the same figures as data in report.json (what the README's tables are made of)
    summary = json.loads((report / "report.json").read_text(encoding="utf-8"))
    (figures,) = summary["runs"]
    assert figures["perplexity"] == pytest.approx(expected.ppl, rel=1e-12)
    assert figures["bits_per_byte"] == pytest.approx(expected.bits_per_byte, rel=1e-12)
    assert (figures["context"], figures["stride"], figures["tokens"]) == (
        expected.context, expected.stride, expected.tokens)
    assert figures["steps"] == 8 and figures["parameters"] == loaded.model.num_parameters()


def test_report_has_the_samples_side_by_side_and_the_error_counts(report: Path) -> None:
    md = (report / "report.md").read_text(encoding="utf-8")
    assert 'Prompt: "the "' in md
    for temperature in ("0.8", "1"):
        for seed in ("0", "1"):
            assert re.search(rf"^\| {temperature} \| {seed} \| ", md, re.MULTILINE)
    for name in CATEGORIES:
        assert re.search(rf"^\| {name} \| .* \| \d+ of \d+ \|$", md, re.MULTILINE)


def test_context_and_stride_are_stated_as_given(run: Path, tmp_path: Path) -> None:
    text = tmp_path / "eval.txt"
    text.write_text("the dog sat on the cat. " * 20, encoding="utf-8")
    assert cli.main(["evaluate", str(run), "--out", str(tmp_path / "r"), "--text", str(text),
                     "--context", "8", "--stride", "4", *QUICK]) == 0
    md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    loaded = load(run)
    words = text.read_text()
    expected = perplexity(loaded.model, loaded.tokenizer.encode(words), text=words,
                          context=8, stride=4)
    assert f"| perplexity | {expected.ppl:.4f} |" in md
    assert "| context, stride | 8, 4 |" in md
    assert f"Evaluation text: {text} (" in md


def test_compare_mode_puts_two_runs_side_by_side(run: Path, tmp_path: Path) -> None:
    assert cli.main(["evaluate", str(run), "--out", str(tmp_path / "int8"),
                     "--compare-int8", "dynamic", *QUICK]) == 0
    md = (tmp_path / "int8" / "report.md").read_text(encoding="utf-8")
    assert "| figure | run | run int8 (dynamic) |" in md
    assert re.search(r"^\| perplexity \| [\d.]+ \| [\d.]+ \|$", md, re.MULTILINE)
    assert "run: sample" in md and "run int8 (dynamic): sample" in md
    checkpoint = sorted((run / "checkpoints").glob("step-*"))[-1]  # the run's newest
    assert cli.main(["evaluate", str(run), "--out", str(tmp_path / "two"),
                     "--compare", str(checkpoint), *QUICK]) == 0
    md = (tmp_path / "two" / "report.md").read_text(encoding="utf-8")
    assert f"| figure | run | {checkpoint.name} |" in md
    rows = re.findall(r"^\| perplexity \| ([\d.]+) \| ([\d.]+) \|$", md, re.MULTILINE)
    assert rows == [(rows[0][0], rows[0][0])]  # the same model twice: the same figures
    assert _png_size(tmp_path / "two" / "loss_curves.png") == (700, 400)


def test_an_existing_report_is_kept_without_overwrite(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    assert cli.main(["evaluate", str(run), "--out", str(out), *QUICK]) == 0
    before = (out / "report.md").read_text(encoding="utf-8")
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--out", str(out), *QUICK]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and str(out / "report.md") in err
    assert (out / "report.md").read_text(encoding="utf-8") == before
    assert cli.main(["evaluate", str(run), "--out", str(out), "--overwrite", *QUICK]) == 0


@pytest.mark.parametrize(("extra", "named"), [
    (["--text", "missing.txt"], "missing.txt"),
    (["--context", "999"], "999"),
    (["--stride", "0"], "stride"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
])
def test_bad_input_is_one_line_naming_the_value(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
        named: str) -> None:
    assert cli.main(["evaluate", str(run), "--out", str(tmp_path / "r"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and named in err
    assert not (tmp_path / "r" / "report.md").exists()


def test_a_bare_checkpoint_needs_text(run: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "int8"
    assert cli.main(["quantize", str(run), str(bare)]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(bare), *QUICK]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--text" in err
    text = tmp_path / "eval.txt"
    text.write_text("the cat sat on the log. " * 10, encoding="utf-8")
    assert cli.main(["evaluate", str(bare), "--text", str(text), *QUICK]) == 0
    md = (bare / "eval" / "report.md").read_text(encoding="utf-8")
    assert "No metrics.jsonl" in md
    assert not (bare / "eval" / "loss_curves.png").exists()


def test_missing_run_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["evaluate", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere" in err


# ---------------------------------------------------------------- samples and their measures


def test_samples_are_the_inference_paths_tokens(run: Path) -> None:
    loaded = load(run)
    samples = draw_samples(loaded.model, loaded.tokenizer, ["the ", "a dog"], [0.5, 1.0],
                           [0, 7], max_new_tokens=10, settings=loaded.sample)
    assert [(s.prompt, s.temperature, s.seed) for s in samples] == [
        (p, t, seed) for p in ("the ", "a dog") for t in (0.5, 1.0) for seed in (0, 7)]
    for s in samples:
        start = torch.tensor([loaded.tokenizer.encode(s.prompt)])
        expected = generate(loaded.model, start, 10, temperature=s.temperature,
                            top_k=loaded.sample.top_k, top_p=loaded.sample.top_p, seed=s.seed)
        assert s.ids == expected[0, start.shape[1]:].tolist()
        assert s.text == loaded.tokenizer.decode(s.ids)
        assert s.repetition == repetition_rate(s.ids, 4)
        expected_distinct = {n: distinct_n(s.text.split(), n) for n in (1, 2, 3)}
        assert s.distinct == pytest.approx(expected_distinct, nan_ok=True, rel=0, abs=0)


def test_mean_logprob_matches_torch_log_softmax() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=1, n_embd=8)).eval()
    prompt, new = [3, 1], [4, 1, 5, 9]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + new]))[0][0]  # (6, V): all within block_size
    logp = torch.log_softmax(logits.double(), dim=-1)
    expected = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(new)) / len(new)
    assert mean_logprob(model, prompt, new) == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert math.isnan(mean_logprob(model, prompt, []))


def test_distinct_and_repetition_worked_by_hand() -> None:
    words = ["the", "cat", "saw", "the", "cat"]  # bigrams: the-cat, cat-saw, saw-the, the-cat
    assert distinct_n(words, 1) == 3 / 5
    assert distinct_n(words, 2) == 3 / 4
    assert repetition_rate(words, 2) == 1 / 4
    assert repetition_rate(list("abababab"), 4) == 1 - 2 / 5
    assert math.isnan(distinct_n(["one"], 2))


@given(st.lists(st.integers(0, 3), max_size=40), st.integers(1, 4))
def test_repetition_and_distinct_are_complementary_fractions(seq: list[int], n: int) -> None:
    if len(seq) < n:
        assert math.isnan(distinct_n(seq, n)) and math.isnan(repetition_rate(seq, n))
        return
    assert 0.0 <= repetition_rate(seq, n) < 1.0
    assert repetition_rate(seq, n) + distinct_n(seq, n) == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- failure predicates


@given(st.lists(st.integers(0, 9), max_size=20), st.lists(st.integers(0, 9), min_size=1,
                                                            max_size=8), st.integers(0, 4))
def test_any_span_repeated_long_enough_is_a_loop(prefix: list[int], span: list[int],
                                                 extra: int) -> None:
    repeats = max(3, -(-16 // len(span))) + extra  # 3+ times and 16+ tokens
    assert repetition_loop(prefix + span * repeats)


def test_repetition_loop_on_constructed_outputs() -> None:
    assert repetition_loop(list("Once upon a time " + "la " * 8))
    assert repetition_loop([7] * 16)
    assert not repetition_loop([7] * 15)  # shorter than min_span
    assert not repetition_loop(list("the quick brown fox jumps over the lazy dog"))
    assert not repetition_loop(list("la la la la la la la la ") + list("and then it ended"))
    assert repetition_loop(list("abcdef" * 3), min_span=18)
    assert not repetition_loop(list("abcdef" * 3), min_repeats=4, min_span=1)


def test_early_end_and_truncation_on_constructed_outputs() -> None:
    assert early_end([9, 0], eot_id=0) and not early_end([9, 9, 9, 9, 9, 0], eot_id=0)
    assert not early_end([0], eot_id=None)
    assert truncated_at_context(10, list(range(1, 7)), eot_id=0, block_size=16)
    assert not truncated_at_context(10, list(range(1, 6)), eot_id=0, block_size=16)
    assert not truncated_at_context(10, [1, 2, 3, 4, 5, 0], eot_id=0, block_size=16)
    assert truncated_at_context(10, [0] * 6, eot_id=None, block_size=16)


def test_invalid_utf8_ood_and_echo_on_constructed_outputs() -> None:
    snowman = "☃".encode()
    assert not invalid_utf8(b"plain " + snowman)
    assert invalid_utf8(b"cut " + snowman[:2]) and invalid_utf8(snowman[1:])
    assert out_of_distribution("naïve ☃ text", set("naive text")) == ["ï", "☃"]
    assert out_of_distribution("abc", "abc") == []
    assert prompt_echo("To be or not to be", "... To be or not to be, that is")
    assert not prompt_echo("To be or not to be", "to be or not to be")  # case differs
    assert not prompt_echo("Hi ", "Hi Hi Hi")  # too short to count


def test_failures_of_a_bpe_sample_with_a_cut_character() -> None:
    text = "héllo wörld, 日本語 🙂 " * 4
    vocab, merges = bpe.train_bpe(text, 270, ["<|endoftext|>"])
    tok = BPETokenizer(bpe.Tokenizer(vocab, merges, special_tokens=["<|endoftext|>"]))
    eot = tok.eot_id
    assert eot is not None
    cut = [i for i, piece in vocab.items() if piece == "🙂".encode()[:1]]  # a lead byte alone
    names = failures("héllo wörld", 2, [*tok.encode(" héllo wörld"), *cut], tok, block_size=64,
                     charset=set(text))
    assert names == ["invalid UTF-8", "out-of-distribution characters", "prompt echo"]
    assert failures("x", 1, [eot], tok, block_size=64) == ["early end-of-text"]
    chars = CharTokenizer("ab ")
    assert failures("ab", 60, chars.encode("abab"), chars, block_size=64,
                    charset="ab ") == ["truncated at the context limit"]


def test_error_analysis_counts_and_examples(run: Path) -> None:
    loaded = load(run)
    samples = draw_samples(loaded.model, loaded.tokenizer, ["the "], [1.0], [0, 1, 2],
                           max_new_tokens=20, settings=loaded.sample)
    categories = error_analysis(samples, examples=2)
    assert [c.name for c in categories] == list(CATEGORIES)
    for c in categories:
        hits = [i for i, s in enumerate(samples) if c.name in s.failures]
        assert (c.count, c.total, c.examples) == (len(hits), 3, hits[:2])
    # prompt (4) + 20 new tokens past block_size 16 with no end-of-text: all truncated
    assert categories[2].count == 3
