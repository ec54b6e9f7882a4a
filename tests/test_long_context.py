"""Long context with the Llama-style model: the sliding KV window in generation, contexts past
the training length, and how perplexity degrades past it.

The oracles: Hugging Face's ``MistralForCausalLM`` (built offline from a config, random weights,
eager attention), greedy-decoded by its full forward over the whole sequence, for the exact
sliding cache; our own cached and uncached generation within ``block_size``; for the
degradation test, the model's own perplexity within its training length (a tiny Llama trained
here on Tiny Shakespeare characters, block_size 32, evaluated out to 4 x 32).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from reference import cli
from reference.evaluation.perplexity import token_nlls
from reference.generate import generate, generate_batch
from reference.inference import with_context
from reference.llama import Llama, LlamaConfig
from reference.model import GPT, GPTConfig
from reference.rope import RopeScaling, parse_rope_scaling
from tests.runs import tiny_char_run

V, C, NH, L, W, BLOCK = 61, 32, 4, 2, 6, 16  # vocab, width, heads, layers, window, block_size


def hf_mistral(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = transformers.MistralConfig(
        vocab_size=V, hidden_size=C, intermediate_size=48, num_hidden_layers=L,
        num_attention_heads=NH, num_key_value_heads=2, max_position_embeddings=4 * BLOCK,
        rms_norm_eps=1e-5, sliding_window=W,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        attn_implementation="eager",
    )
    model = transformers.MistralForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if "norm" in name else 0.15)
                    + (1.0 if "norm" in name else 0.0))
    return model.eval()


def ours_from(hf: Any, block_size: int = BLOCK) -> Llama:
    """Our model with Mistral's weights, trained (say) on ``block_size`` tokens."""
    model = Llama.from_hf(hf)
    short = Llama(model.config.model_copy(update={"block_size": block_size}))
    short.load_state_dict(model.state_dict())
    return short.eval()


def greedy_by_full_forward(hf: Any, idx: torch.Tensor, n: int) -> torch.Tensor:
    """The oracle: each next token the argmax of Hugging Face's forward over everything."""
    with torch.no_grad():
        for _ in range(n):
            nxt = hf(input_ids=idx).logits[:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)
    return idx


def test_slide_generates_three_block_sizes_exactly_as_hf_mistral() -> None:
    """48 new tokens (3 x block_size) through a ring of W = 6 slots equal greedy decoding by
    Mistral's full forward over the whole sequence, for both rows."""
    hf = hf_mistral()
    model = ours_from(hf)
    prompt = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(1))
    got = generate(model, prompt, 3 * BLOCK, temperature=0.0, overflow="slide")
    assert got.shape == (2, 5 + 3 * BLOCK)
    assert got.tolist() == greedy_by_full_forward(hf, prompt, 3 * BLOCK).tolist()


def test_slide_prefills_a_prompt_longer_than_block_size_and_the_window() -> None:
    hf = hf_mistral(seed=2)
    model = ours_from(hf)
    prompt = torch.randint(0, V, (1, BLOCK + 7), generator=torch.Generator().manual_seed(3))
    got = generate(model, prompt, 10, temperature=0.0, overflow="slide")
    assert got.tolist() == greedy_by_full_forward(hf, prompt, 10).tolist()


def test_slide_with_padded_rows_equals_each_row_alone() -> None:
    model = ours_from(hf_mistral(seed=4))
    prompts = [[1, 2, 3, 4, 5], [7, 8]]
    both = generate_batch(model, prompts, 2 * BLOCK, temperature=0.0, overflow="slide")
    for prompt, row in zip(prompts, both, strict=True):
        alone = generate(model, torch.tensor([prompt]), 2 * BLOCK, temperature=0.0,
                         overflow="slide")
        assert row == alone[0, len(prompt):].tolist()


def test_slide_on_a_full_attention_llama_equals_the_cache_within_block_size() -> None:
    """Without a window, "slide" keeps the last block_size keys: the same tokens as the plain
    cache up to block_size, then an approximation that still decodes, with finite logits."""
    torch.manual_seed(0)
    model = Llama(LlamaConfig(block_size=BLOCK, vocab_size=V, n_layer=L, n_head=NH,
                              n_kv_head=2, n_embd=C)).eval()
    prompt = torch.tensor([[1, 2, 3]])
    within = generate(model, prompt, BLOCK - 3, temperature=0.0)
    slid = generate(model, prompt, 3 * BLOCK, temperature=0.0, overflow="slide")
    assert slid[:, :BLOCK].tolist() == within.tolist()
    assert slid.shape == (1, 3 + 3 * BLOCK) and int(slid.max()) < V


def test_slide_is_refused_where_it_cannot_apply() -> None:
    gpt = GPT(GPTConfig(block_size=8, vocab_size=V, n_layer=1, n_head=1, n_embd=8)).eval()
    with pytest.raises(ValueError, match="learned position embeddings end at block_size 8"):
        generate(gpt, torch.tensor([[1, 2]]), 3, overflow="slide")
    model = ours_from(hf_mistral())
    with pytest.raises(ValueError, match="needs use_cache=True"):
        generate(model, torch.tensor([[1, 2]]), 3, overflow="slide", use_cache=False)
    with pytest.raises(ValueError, match="at most the ring's slots 6"):
        generate_batch(model, [[1] * 8, [2]], 3, overflow="slide")
    with pytest.raises(ValueError, match="overflow must be"):
        generate(model, torch.tensor([[1, 2]]), 3, overflow="wrap")  # type: ignore[arg-type]


# ---------------------------------------------------------------- past the training length

TRAINED = 32  # the training length (block_size); evaluated out to 4 x TRAINED


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shakespeare_llama(shared_data: Path) -> tuple[Llama, list[int], list[str]]:
    """A 2-layer Llama (48 wide) trained 250 steps on Tiny Shakespeare characters with
    block_size 32 (a few seconds on one thread), and 20,000 validation characters' ids."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text])
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:split + 20_000]
    torch.manual_seed(0)
    model = Llama(LlamaConfig(block_size=TRAINED, vocab_size=len(chars), n_layer=2, n_head=4,
                              n_embd=48))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        ix = torch.randint(0, len(train) - TRAINED - 1, (16,), generator=g).tolist()
        x = torch.stack([train[i:i + TRAINED] for i in ix])
        y = torch.stack([train[i + 1:i + TRAINED + 1] for i in ix])
        _, loss = model(x, y)
        optimizer.zero_grad()
        assert loss is not None
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    return model.eval(), val.tolist(), chars


def variant(model: Llama, **update: Any) -> Llama:
    """The trained weights under another configuration (a longer block_size, a window...)."""
    other = Llama(LlamaConfig.model_validate(model.config.model_dump() | update)).eval()
    other.load_state_dict(model.state_dict())
    return other


def by_position(model: Llama, ids: list[int]) -> dict[str, float]:
    """Perplexity within the training length (1-32 tokens of context), past it (33-128), and
    at the end (97-128), in disjoint windows of 4 x 32."""
    nll, pos = token_nlls(model, ids, context=4 * TRAINED, stride=4 * TRAINED)

    def ppl(mask: torch.Tensor) -> float:
        return math.exp(float(nll[mask].mean()))

    return {"within": ppl(pos < TRAINED), "past": ppl(pos >= TRAINED),
            "end": ppl(pos >= 3 * TRAINED)}


def test_perplexity_past_the_training_length_degrades_gracefully(
        shakespeare_llama: tuple[Llama, list[int], list[str]]) -> None:
    """Measured (seeds 0 and 1, 200-300 steps): plain RoPE extrapolation, perplexity at
    97-128 tokens of context 1.6-2.7 x the in-length one; a sliding window of 32 (the trained
    model unchanged, each query seeing the 32 positions it was trained on) 0.98-1.00 x; YaRN
    (factor 4 over 32) 1.05-1.17 x past it, a little worse within; linear interpolation keeps
    the ratio (~1.1 x) but doubles the in-length perplexity. The margins below are wide."""
    model, ids, _ = shakespeare_llama
    long = 4 * TRAINED
    plain = by_position(variant(model, block_size=long), ids)
    window = by_position(variant(model, block_size=long, sliding_window=TRAINED), ids)
    yarn = by_position(variant(model, block_size=long, rope_scaling=RopeScaling(
        type="yarn", factor=4.0, original_max_position_embeddings=TRAINED)), ids)
    linear = by_position(variant(model, block_size=long,
                                 rope_scaling=RopeScaling(type="linear", factor=4.0)), ids)
    print(f"plain {plain}\nwindow {window}\nyarn {yarn}\nlinear {linear}")
    assert plain["end"] > 1.3 * plain["within"]  # extrapolated angles: worse the further out
    assert window["within"] == pytest.approx(plain["within"], rel=1e-9)  # T <= W: no change
    assert window["past"] < 1.1 * window["within"] and window["end"] < 1.1 * window["within"]
    assert yarn["past"] < 1.35 * yarn["within"] and yarn["end"] < plain["end"]
    assert linear["within"] > plain["within"]  # interpolation without fine-tuning costs


def test_generation_past_the_training_length_stays_finite_and_decodes(
        shakespeare_llama: tuple[Llama, list[int], list[str]]) -> None:
    """4 x 32 new characters: through the exact sliding window (a ring of 32 slots) and with
    the context extended to 128 (plain extrapolation): finite logits, ids in the vocabulary."""
    model, ids, chars = shakespeare_llama
    prompt = torch.tensor([ids[:8]])
    windowed = variant(model, sliding_window=TRAINED)
    slid = generate(windowed, prompt, 4 * TRAINED, temperature=0.8, seed=0, overflow="slide")
    extended = variant(model, block_size=4 * TRAINED)
    full = generate(extended, prompt, 4 * TRAINED - 8, temperature=0.8, seed=0)
    for out in (slid, full):
        assert out.shape[1] >= 4 * TRAINED and int(out.min()) >= 0 and int(out.max()) < len(chars)
        text = "".join(chars[i] for i in out[0].tolist())
        assert len(text) == out.shape[1]
        logits = extended(out[:, -4 * TRAINED:])[0]
        assert bool(torch.isfinite(logits).all())


def test_with_context_extends_a_llama_and_refuses_a_gpt_past_block_size() -> None:
    llama = Llama(LlamaConfig(block_size=8, vocab_size=V, n_layer=1, n_head=2, n_embd=8))
    assert with_context(llama, 32, "yarn:4") == 8
    assert llama.config.block_size == 32 and tuple(llama.rope_cos.shape) == (32, 2)
    assert llama.config.rope_scaling == RopeScaling(type="yarn", factor=4.0,
                                                    original_max_position_embeddings=8)
    assert llama(torch.zeros(1, 32, dtype=torch.long))[0].shape == (1, 32, V)
    with_context(llama, None, sliding_window=5)  # the same as a model built with the window
    built = Llama(llama.config).eval()
    built.load_state_dict(llama.state_dict())
    assert built.config.sliding_window == 5
    idx = torch.randint(0, V, (1, 32), generator=torch.Generator().manual_seed(0))
    assert torch.equal(llama.eval()(idx)[0], built(idx)[0])
    with pytest.raises(ValueError, match="sliding window must be >= 1, got 0"):
        with_context(llama, None, sliding_window=0)
    gpt = GPT(GPTConfig(block_size=8, vocab_size=V, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match="context 9 is past block_size 8"):
        with_context(gpt, 9)
    with pytest.raises(ValueError, match="need rotary positions"):
        with_context(gpt, 8, "linear:2")
    with pytest.raises(ValueError, match="sliding window 4 need rotary positions"):
        with_context(gpt, 8, sliding_window=4)
    assert with_context(gpt, 8) == 8
    for bad in ("cubic:2", "linear", "yarn:x", "linear:0.5", "linear:nan"):
        with pytest.raises(ValueError, match=f"got {bad!r}"):
            parse_rope_scaling(bad, 8)


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama-style character run, block_size 16 (a few seconds)."""
    return tiny_char_run(tmp_path_factory.mktemp("longrun"), "model.arch=llama")


def test_evaluate_a_llama_run_past_its_training_length(
        llama_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    quick = ["--max-new-tokens", "8", "--temperature", "1.0", "--seed", "0"]
    assert cli.main(["evaluate", str(llama_run), "--out", str(out), "--context", "64",
                     "--rope-scaling", "yarn:4", *quick]) == 0
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "trained on 16 tokens, evaluated with 64 (rotary scaling yarn x4)" in md
    assert "within the training length (1-16 tokens of context)" in md
    figures = json.loads((out / "report.json").read_text(encoding="utf-8"))["runs"][0]
    assert figures["context"] == 64 and figures["trained_length"] == 16
    assert figures["perplexity_past_training_length"] > 0
    assert cli.main(["evaluate", str(llama_run), "--out", str(tmp_path / "w"), "--context", "48",
                     "--sliding-window", "16", *quick]) == 0
    md = (tmp_path / "w" / "report.md").read_text(encoding="utf-8")
    assert "(plain rotary extrapolation, sliding window 16)" in md
    capsys.readouterr()
    assert cli.main(["evaluate", str(llama_run), "--out", str(tmp_path / "bad"),
                     "--rope-scaling", "cubic:2", *quick]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "'cubic:2'" in err


def test_generate_a_llama_run_past_its_training_length(
        llama_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """40 new characters from a run trained on 16: the sliding cache, and a 48-token context
    with linear interpolation; one line naming the value for a bad scaling."""
    for extra in (["--slide"], ["--context", "48", "--rope-scaling", "linear:3"],
                  ["--sliding-window", "8", "--slide"],
                  ["--slide", "--num-samples", "2"]):
        assert cli.main(["generate", str(llama_run), "-n", "40", "--seed", "0", *extra]) == 0
        out = capsys.readouterr().out
        assert out.startswith(("the ", "--- sample 1 ---")), out
    assert cli.main(["generate", str(llama_run), "--rope-scaling", "yarn:0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "'yarn:0'" in err
