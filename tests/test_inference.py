"""The one inference path (``reference.inference``): load, stream, decode; shared by the command
line's ``generate`` and the trainer's sample, and free of trainer modules.

Oracles: ``generate`` (itself checked against Hugging Face in the gpt spec) for the token
stream; the tokenizer's whole-sequence ``decode`` for the streamed text; the trainer's own
sample for the command line.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reference import bpe, cli
from reference.generate import generate, stream
from reference.inference import SampleSettings, load, prompt_ids, sample_text, stream_text
from reference.model import GPT, GPTConfig
from reference.tokenizers import BPETokenizer, CharTokenizer
from reference.trainer.config import load_config
from reference.trainer.loop import Trainer
from tests.outcomes import ROOT

MULTIBYTE = "héllo wörld, 日本語のテキスト 🙂🙃 ünïcödé " * 3


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Trainer]:
    """A tiny character-level run on a few lines of text (a few seconds)."""
    root = tmp_path_factory.mktemp("run")
    text = root / "corpus.txt"
    text.write_text("the cat sat on the mat. " * 400, encoding="utf-8")
    config = load_config(overrides=[
        f"train.out_dir={root / 'run'}", "train.device=cpu", "train.threads=1",
        "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
        "data.source=text", f"data.path={text}", "train.batch_size=4", "train.max_steps=6",
        "train.warmup_steps=1", "train.eval_interval=6", "train.eval_steps=1",
        "train.progress=false", "train.tensorboard=false", "train.plot=false",
        "sample.prompt=the ", "sample.max_new_tokens=12", "sample.temperature=0.9",
        "sample.seed=3",
    ])
    threads = torch.get_num_threads()
    trainer = Trainer(config)
    trainer.fit()
    torch.set_num_threads(threads)
    return root / "run", trainer


@pytest.fixture(scope="module")
def bpe_tokenizer() -> BPETokenizer:
    vocab, merges = bpe.train_bpe(MULTIBYTE, 300, ["<|endoftext|>"])
    return BPETokenizer(bpe.Tokenizer(vocab, merges, special_tokens=["<|endoftext|>"]))


def test_importing_the_inference_path_loads_no_trainer_module() -> None:
    code = ("import sys, reference.inference, reference.cli\n"
            "bad = sorted(m for m in sys.modules if m.startswith('reference.trainer'))\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_cli_generate_loads_no_trainer_module(run: tuple[Path, Trainer]) -> None:
    code = ("import sys; from reference import cli\n"
            f"assert cli.main(['generate', {str(run[0])!r}, '-n', '3']) == 0\n"
            "bad = sorted(m for m in sys.modules if m.startswith('reference.trainer'))\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# ----------------------------------------------------------------------------- tokens


def _model(vocab_size: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=16, vocab_size=vocab_size, n_layer=1, n_head=2,
                         n_embd=16)).eval()


@pytest.mark.parametrize("eos_id", [None, 3])
def test_stream_yields_what_generate_returns_step_by_step(eos_id: int | None) -> None:
    model = _model(20)
    prompt = torch.randint(0, 20, (3, 5))
    steps = list(stream(model, prompt, 30, temperature=1.5, seed=7, eos_id=eos_id))
    out = generate(model, prompt, 30, temperature=1.5, seed=7, eos_id=eos_id)
    assert all(t.shape == (3,) and t.dtype == torch.int64 for t in steps)
    assert torch.equal(torch.stack(steps, dim=1), out[:, 5:])


def test_stream_checks_its_arguments_before_the_first_step() -> None:
    model = _model(20)
    with pytest.raises(ValueError, match="top_p"):
        stream(model, torch.zeros(1, 1, dtype=torch.long), 3, top_p=2.0)
    with pytest.raises(ValueError, match="token id 20"):
        stream(model, torch.tensor([[1, 20]]), 3)


@pytest.mark.parametrize("training", [False, True])
def test_generation_leaves_the_models_mode_alone(training: bool) -> None:
    model = _model(20).train(training)
    for _ in stream(model, torch.zeros(1, 2, dtype=torch.long), 3, seed=0):
        assert model.training is training
    generate(model, torch.zeros(1, 2, dtype=torch.long), 3, seed=0)
    assert model.training is training


def test_two_interleaved_streams_on_one_model_equal_each_alone() -> None:
    """Nothing in the model changes while streams run: a server can interleave requests."""
    model = _model(20)
    a_alone = generate(model, torch.tensor([[1, 2]]), 10, seed=1)
    b_alone = generate(model, torch.tensor([[3]]), 10, temperature=0.0)
    a, b = stream(model, torch.tensor([[1, 2]]), 10, seed=1), \
        stream(model, torch.tensor([[3]]), 10, temperature=0.0)
    a_steps, b_steps = [], []
    for x, y in zip(a, b, strict=True):
        a_steps.append(x)
        b_steps.append(y)
    assert torch.equal(torch.stack(a_steps, 1), a_alone[:, 2:])
    assert torch.equal(torch.stack(b_steps, 1), b_alone[:, 1:])


# ----------------------------------------------------------------------------- text


@given(seed=st.integers(0, 10_000), temperature=st.sampled_from([0.0, 1.0, 3.0]))
def test_streamed_text_equals_decoding_all_ids_at_once(
    bpe_tokenizer: BPETokenizer, seed: int, temperature: float
) -> None:
    """Multi-byte characters cut between tokens: the pieces still add up to ``decode``."""
    model = _model(bpe_tokenizer.vocab_size, seed=seed % 3)
    settings = SampleSettings(prompt="日本", max_new_tokens=25, temperature=temperature, seed=seed,
                              top_p=None)
    pieces = list(stream_text(model, bpe_tokenizer, settings))
    idx = torch.tensor([prompt_ids(bpe_tokenizer, settings.prompt, 16)])
    ids = generate(model, idx, 25, temperature=temperature, seed=seed, top_p=None,
                   eos_id=bpe_tokenizer.eot_id)[0, idx.shape[1]:].tolist()
    if bpe_tokenizer.eot_id in ids:
        ids = ids[: ids.index(bpe_tokenizer.eot_id)]
    assert "".join(pieces) == bpe_tokenizer.decode(ids)
    assert all(pieces), "no empty pieces"


class Scripted(torch.nn.Module):
    """A stand-in model whose greedy choice at step i is ``script[i]``: forces a token stream."""

    def __init__(self, script: list[int], vocab_size: int, prompt_len: int) -> None:
        super().__init__()
        self.config = GPTConfig(block_size=64, vocab_size=vocab_size, n_layer=1, n_head=1,
                                n_embd=1)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the stream a device
        self.script, self.prompt_len = script, prompt_len

    def new_cache(self, batch_size: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(length=None)  # nothing cached: the script knows the token

    def forward(self, idx: torch.Tensor, targets: None = None, *, cache: object = None,
                input_pos: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        seen = idx.shape[1] if input_pos is None else int(input_pos[0, -1]) + 1
        logits = torch.full((*idx.shape, self.config.vocab_size), -1e9)
        logits[:, -1, self.script[seen - self.prompt_len]] = 0.0
        return logits, None


def test_a_character_split_across_tokens_is_yielded_once_whole(
    bpe_tokenizer: BPETokenizer,
) -> None:
    byte_id = {token: i for i, token in bpe_tokenizer.inner.vocab.items() if len(token) == 1}
    script = [byte_id[bytes([b])] for b in "🙂".encode()] + [byte_id[b"!"]]
    prompt = "ab"
    model = Scripted(script, bpe_tokenizer.vocab_size, len(bpe_tokenizer.encode(prompt)))
    settings = SampleSettings(prompt=prompt, max_new_tokens=5, temperature=0.0)
    pieces = list(stream_text(model, bpe_tokenizer, settings))  # type: ignore[arg-type]
    assert pieces == ["🙂", "!"], "four byte tokens, one character: nothing before it is whole"


def test_empty_prompt_starts_from_end_of_text_or_is_refused(bpe_tokenizer: BPETokenizer) -> None:
    assert prompt_ids(bpe_tokenizer, "", 16) == [bpe_tokenizer.eot_id]
    with pytest.raises(ValueError, match="the prompt is empty"):
        prompt_ids(CharTokenizer("abc"), "", 16)
    assert prompt_ids(CharTokenizer("abc"), "abcabc", 4) == [2, 0, 1, 2], "the last block_size"


# ----------------------------------------------------------------------------- runs


def test_load_gives_the_runs_model_tokenizer_and_sample_settings(
    run: tuple[Path, Trainer],
) -> None:
    path, trainer = run
    loaded = load(path)
    assert not loaded.model.training
    assert loaded.checkpoint == trainer.last_checkpoint
    assert loaded.sample == trainer.config.sample
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("the mat")) == "the mat"
    for name, weight in trainer.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], weight), name
    assert load(loaded.checkpoint).checkpoint == loaded.checkpoint, "a checkpoint directly"


def test_the_trainer_the_cli_and_stream_text_draw_the_same_sample(
    run: tuple[Path, Trainer], capsys: pytest.CaptureFixture[str]
) -> None:
    path, trainer = run
    loaded = load(path)
    streamed = loaded.sample.prompt + "".join(
        stream_text(loaded.model, loaded.tokenizer, loaded.sample))
    assert trainer.sample() == [streamed]
    assert trainer.model.training, "the trainer's model goes back to training mode"
    assert sample_text(loaded.model, loaded.tokenizer, loaded.sample) == [streamed]
    assert cli.main(["generate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == streamed + "\n"
    assert "12 tokens in" in err and "tokens/s (KV cache" in err, err
    assert cli.main(["generate", str(path), "--no-cache"]) == 0
    out, err = capsys.readouterr()
    assert out == streamed + "\n", "the cache changes nothing but the speed"
    assert "full context each step" in err


def test_cli_options_override_the_runs_sample_settings(
    run: tuple[Path, Trainer], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = run
    assert cli.main(["generate", str(path), "-p", "mat", "-n", "5", "-t", "0"]) == 0
    loaded = load(path)
    greedy = SampleSettings(prompt="mat", max_new_tokens=5, temperature=0.0)
    assert capsys.readouterr().out == "mat" + "".join(
        stream_text(loaded.model, loaded.tokenizer, greedy)) + "\n"
    assert cli.main(["generate", str(path), "--num-samples", "2", "-n", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2


@pytest.mark.parametrize(("args", "words"), [
    (["--top-p", "1.5"], ["--top-p", "1.5"]),
    (["--temperature", "-1"], ["--temperature", "-1"]),
    (["--num-samples", "0"], ["--num-samples", "0"]),
])
def test_cli_generate_names_a_bad_option(
    run: tuple[Path, Trainer], capsys: pytest.CaptureFixture[str], args: list[str],
    words: list[str],
) -> None:
    assert cli.main(["generate", str(run[0]), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err
