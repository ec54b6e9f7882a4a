"""The reference GPT beyond the spec: sizes of GPT-2's presets, tying, dropout, config errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from reference.generate import generate
from reference.model import GPT, PRESETS, GPTConfig, check_token_ids
from reference.settings import ValidationError

pytestmark = pytest.mark.gpt

TINY = GPTConfig(block_size=16, vocab_size=100, n_layer=2, n_head=4, n_embd=32)


def meta_gpt(config: GPTConfig) -> GPT:
    with torch.device("meta"):  # shapes only: GPT-2 xl costs nothing here
        return GPT(config)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_sizes_match_hf_gpt2(name: str) -> None:
    transformers = pytest.importorskip("transformers")
    c = PRESETS[name]
    hf_config = transformers.GPT2Config(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd)
    with torch.device("meta"):
        expected = transformers.GPT2LMHeadModel(hf_config).num_parameters()
    assert meta_gpt(c).num_parameters() == expected


def test_gpt2_small_counts() -> None:
    model = meta_gpt(PRESETS["gpt2"])
    assert model.num_parameters() == 124_439_808
    assert model.num_parameters(non_embedding=True) == 124_439_808 - 1024 * 768


def test_head_is_tied_to_the_token_embedding() -> None:
    model = GPT(TINY)
    assert model.lm_head.weight is model.transformer.wte.weight
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names, "a tied parameter is listed once"


def test_dropout_acts_in_training_mode_only() -> None:
    model = GPT(TINY.model_copy(update={"dropout": 0.5}))
    idx = torch.randint(0, 100, (2, 16))
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0]), "training mode: dropout must be random"
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0]), "eval mode: deterministic"


def test_bias_free_model_has_no_bias_and_runs() -> None:
    model = GPT(TINY.model_copy(update={"bias": False}))
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    logits, loss = model(torch.randint(0, 100, (2, 8)), torch.randint(0, 100, (2, 8)))
    assert logits.shape == (2, 8, 100) and loss is not None and torch.isfinite(loss)


def test_loss_ignores_minus_one_targets() -> None:
    model = GPT(TINY).eval()
    idx, targets = torch.randint(0, 100, (2, 8)), torch.randint(0, 100, (2, 8))
    logits, loss = model(idx, targets)
    partial = targets.clone()
    partial[:, :4] = -1
    _, loss_partial = model(idx, partial)
    expected = torch.nn.functional.cross_entropy(
        logits[:, 4:].reshape(-1, 100), targets[:, 4:].reshape(-1)
    )
    assert loss is not None and loss_partial is not None
    assert abs(loss_partial.item() - expected.item()) < 1e-6


def test_residual_projections_get_the_scaled_init() -> None:
    config = GPTConfig(block_size=64, vocab_size=512, n_layer=8, n_head=4, n_embd=64)
    torch.manual_seed(0)
    model = GPT(config)
    proj = torch.cat(
        [p.flatten() for n, p in model.named_parameters() if n.endswith("c_proj.weight")]
    )
    fc = torch.cat([p.flatten() for n, p in model.named_parameters() if n.endswith("c_fc.weight")])
    assert abs(proj.std().item() / (0.02 / 4) - 1) < 0.05  # 0.02 / sqrt(2 * 8)
    assert abs(fc.std().item() / 0.02 - 1) < 0.05


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"n_embd": 30, "n_head": 4}, ["30", "4"]),
        ({"n_layer": 0}, ["n_layer", "0"]),
        ({"vocab_size": -5}, ["vocab_size", "-5"]),
        ({"block_size": 2.5}, ["block_size", "2.5"]),
        ({"n_head": True}, ["n_head", "True"]),
        ({"dropout": 1.0}, ["dropout", "1.0"]),
        ({"bias": "yes"}, ["bias", "yes"]),
    ],
)
def test_config_rejects_bad_values_naming_them(kwargs: dict[str, object], words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        GPTConfig(**kwargs)  # type: ignore[arg-type]
    assert all(w in str(info.value) for w in words), str(info.value)


def test_config_is_frozen() -> None:
    with pytest.raises(ValidationError, match="frozen"):
        TINY.n_layer = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("idx", "error", "words"),
    [
        (torch.randint(0, 100, (1, 17)), ValueError, ["sequence length 17", "block_size 16"]),
        (torch.tensor([[1.0]]), TypeError, ["torch.float32"]),
        (torch.tensor([[True]]), TypeError, ["torch.bool"]),
        (torch.zeros(1, 0, dtype=torch.long), ValueError, ["empty", "(1, 0)"]),
        (torch.zeros(4, dtype=torch.long), ValueError, ["(B, T)", "(4,)"]),
        ([[1, 2]], TypeError, ["list"]),
    ],
)
def test_forward_rejects_bad_input_naming_the_value(
    idx: object, error: type, words: list[str]
) -> None:
    with pytest.raises(error) as info:
        GPT(TINY)(idx)
    assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize(
    ("idx", "words"),
    [(torch.tensor([[5, 100]]), ["token id 100", "[0, 100)"]), (torch.tensor([[-3, 5]]), ["-3"])],
)
def test_ids_outside_the_vocabulary_are_refused_at_the_edges(idx: Tensor, words: list[str]) -> None:
    """The forward pass reads only the ids' shape (no device sync); the range is checked where
    ids enter: ``check_token_ids``, and generation, which calls it once."""
    for call in (lambda: check_token_ids(idx, TINY.vocab_size),
                 lambda: generate(GPT(TINY).eval(), idx, 2)):
        with pytest.raises(ValueError) as info:
            call()
        assert all(w in str(info.value) for w in words), str(info.value)


def test_forward_rejects_targets_of_another_shape() -> None:
    with pytest.raises(ValueError, match=r"targets.*\(2, 4\).*\(2, 3\)"):
        GPT(TINY)(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))


def test_int32_token_ids_are_accepted() -> None:
    model = GPT(TINY).eval()
    idx = torch.randint(0, 100, (2, 8))
    assert torch.equal(model(idx.int())[0], model(idx)[0])


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_activation_checkpointing_recomputes_and_gives_the_same_gradients(dropout: float) -> None:
    config = GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=8, dropout=dropout)
    torch.manual_seed(0)
    plain = GPT(config)
    recomputed = GPT(config).set_activation_checkpointing(True)
    recomputed.load_state_dict(plain.state_dict())
    idx = torch.randint(11, (3, 8))
    grads, calls = [], []
    for model in (plain, recomputed):
        seen: list[int] = []
        model.transformer.h[0].attn.register_forward_hook(lambda *_, seen=seen: seen.append(1))
        torch.manual_seed(1)  # the same dropout masks (checkpoint replays the RNG state)
        _, loss = model(idx, idx)
        assert loss is not None
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
        calls.append(len(seen))
    assert calls == [1, 2], "with checkpointing the block's forward runs again in backward"
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-6, atol=1e-7, msg=name)
    assert list(plain.state_dict()) == list(recomputed.state_dict()), "names unchanged"


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_forward_compiles_to_one_graph_without_host_sync(mode: str) -> None:
    """``fullgraph=True`` fails on any graph break, e.g. a data-dependent check of the ids
    (``int(idx.max())``), which would also be a host-device sync on every GPU step."""
    torch._dynamo.reset()
    config = GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=8, dropout=0.1)
    model = GPT(config).train(mode == "train")
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    idx = torch.randint(11, (2, 8))
    torch.manual_seed(0)
    logits, loss = compiled(idx, idx)
    torch.manual_seed(0)
    want_logits, want_loss = model(idx, idx)
    torch.testing.assert_close(logits, want_logits)
    torch.testing.assert_close(loss, want_loss)
    logits, none = compiled(idx[:, :5])
    assert none is None and logits.shape == (2, 5, 11)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_forward_on_meta_returns_everything_on_meta(mode: str) -> None:
    """The forward pass reads only shapes, so it runs on ``meta``; a tensor made without
    ``device=`` (positions, a mask) would land on the CPU and fail to mix. Training mode too,
    with dropout and activation checkpointing."""
    config = TINY.model_copy(update={"dropout": 0.1})
    model = meta_gpt(config).set_activation_checkpointing(True).train(mode == "train")
    idx = torch.zeros(2, 16, dtype=torch.long, device="meta")
    logits, loss = model(idx, idx)
    assert loss is not None
    assert (logits.device.type, tuple(logits.shape)) == ("meta", (2, 16, 100))
    assert (loss.device.type, tuple(loss.shape)) == ("meta", ())
