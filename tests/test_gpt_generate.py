"""reference.generate beyond the spec: seeds, modes, the model's state, argument errors."""

from __future__ import annotations

import pytest
import torch

from reference.generate import generate, top_k_filter
from reference.model import GPT, GPTConfig

pytestmark = pytest.mark.gpt

CONFIG = GPTConfig(block_size=16, vocab_size=100, n_layer=2, n_head=4, n_embd=32)


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


def test_greedy_equals_an_argmax_loop(model: GPT) -> None:
    prompt = torch.randint(0, 100, (3, 4))
    idx = prompt
    with torch.no_grad():
        for _ in range(20):  # past block_size: the loop crops as generate must
            idx = torch.cat([idx, model(idx[:, -16:])[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generate(model, prompt, 20, temperature=0.0), idx)


def test_seed_equals_a_generator_seeded_the_same(model: GPT) -> None:
    prompt = torch.randint(0, 100, (2, 3))
    a = generate(model, prompt, 12, top_p=0.9, seed=5)
    b = generate(model, prompt, 12, top_p=0.9, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_seeded_generation_leaves_the_global_rng_alone(model: GPT) -> None:
    state = torch.get_rng_state()
    generate(model, torch.zeros(1, 1, dtype=torch.long), 5, seed=1)
    assert torch.equal(torch.get_rng_state(), state)


def test_the_model_is_left_in_the_mode_it_was_in(model: GPT) -> None:
    model.train()
    try:
        generate(model, torch.zeros(1, 1, dtype=torch.long), 2, seed=0)
        assert model.training
    finally:
        model.eval()


def test_zero_new_tokens_returns_the_prompt(model: GPT) -> None:
    prompt = torch.randint(0, 100, (2, 3))
    assert torch.equal(generate(model, prompt, 0), prompt)


def test_top_k_larger_than_the_vocabulary_keeps_everything() -> None:
    logits = torch.randn(2, 10)
    assert torch.equal(top_k_filter(logits, 50), logits)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"temperature": -1.0}, ["temperature", "-1.0"]),
        ({"temperature": float("nan")}, ["temperature", "nan"]),
        ({"top_k": 0}, ["top_k", "0"]),
        ({"top_p": 0.0}, ["top_p", "0.0"]),
        ({"top_p": 1.2}, ["top_p", "1.2"]),
        ({"eos_id": 100}, ["eos_id 100", "100)"]),
        ({"max_new_tokens": -1}, ["max_new_tokens", "-1"]),
        ({"seed": 1, "generator": torch.Generator()}, ["seed or generator"]),
    ],
)
def test_bad_arguments_are_named(model: GPT, kwargs: dict[str, object], words: list[str]) -> None:
    args: dict[str, object] = {"max_new_tokens": 2, **kwargs}
    with pytest.raises(ValueError) as info:
        generate(model, torch.zeros(1, 1, dtype=torch.long), **args)  # type: ignore[arg-type]
    assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize("temperature", [1e-29, 1e-30, 1e-45, 1e-310, 5e-324])
def test_a_tiny_temperature_draws_the_argmax_without_overflow(temperature: float) -> None:
    """``logits / T`` overflows float32 below ~1e-30 (and 5e-324 rounds to 0 there): sampling
    still draws each row's argmax, with top-k and top-p too, never NaN probabilities."""
    from reference.generate import sample_next_token

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 30
    for options in ({}, {"top_k": 1}, {"top_p": 5e-324}, {"top_k": 5, "top_p": 0.5}):
        got = sample_next_token(logits, temperature, **options)  # type: ignore[arg-type]
        assert torch.equal(got, logits.argmax(-1)), options
