"""The Llama-style model (``reference.llama``, dense and mixture of experts) through the
inference-side library: int8 quantization, LoRA and the continuous-batching engine.

Oracles: the float model (int8 logits within the bound that tests/test_quantization_model.py
states for GPT-2: KL <= 1e-5 nats weight-only, 1e-4 dynamic, |Δ logit| <= 2e-2, the same greedy
token); peft's LoRA on ``transformers.LlamaForCausalLM`` built offline from a config with random
weights (ours takes its weights through ``Llama.from_hf``): logits within 1e-6 in float32, as
the GPT-2 parity tests of specs/test_lora.py, before training, after SGD steps on both and after
merging both; each request run alone (the engine's batched tokens are the same, exactly, in
float64).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference.batching import Engine, Request, run_batched
from reference.checkpoint import WEIGHTS_NAME, load_checkpoint, read_safetensors, save_checkpoint
from reference.hf_llama import to_hf_model
from reference.llama import Llama, LlamaConfig
from reference.lora import (
    LLAMA_MLP_TARGETS,
    LLAMA_TARGETS,
    LoRALinear,
    apply_lora,
    check_lora_targets,
    default_targets,
    load_adapter,
    lora_state_dict,
    merge_lora,
    save_adapter,
    trainable_parameters,
    unmerge_lora,
    unwrap_lora,
)
from reference.model import GPT, GPTConfig
from reference.moe import MoE
from reference.quantization import Int8Linear, linear_weight_bytes, quantization_of, quantize

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

DENSE = LlamaConfig(block_size=32, vocab_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                    intermediate_size=96)
MOE = DENSE.model_copy(update={"n_experts": 4, "n_experts_per_tok": 2, "intermediate_size": 48})
CONFIGS = {"dense": DENSE, "moe": MOE}
PEFT_TOL = 1e-6  # float32, the GPT-2 parity bar (the two differ by ~1e-7 here)


def small_llama(config: LlamaConfig, seed: int = 0, scale: float = 8.0) -> Llama:
    """A Llama at its init, the norms perturbed, the embedding and head scaled up so that the
    logits span several units (at the init they are within ±1, where any error looks small)."""
    torch.manual_seed(seed)
    model = Llama(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
        model.model.embed_tokens.weight.mul_(scale)
        model.lm_head.weight.mul_(scale)
    return model


def tokens(config: LlamaConfig, shape: tuple[int, int], seed: int) -> Tensor:
    return torch.randint(0, config.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- int8


def expected_int8(config: LlamaConfig) -> list[str]:
    """The blocks' linear layers by hand: attention, then the SwiGLU or every expert's."""
    names = []
    for i in range(config.n_layer):
        names += [f"model.layers.{i}.self_attn.{p}_proj" for p in "qkvo"]
        mlps = ([f"model.layers.{i}.mlp.experts.{e}" for e in range(config.n_experts)]
                if config.n_experts else [f"model.layers.{i}.mlp"])
        names += [f"{m}.{p}_proj" for m in mlps for p in ("gate", "up", "down")]
    return names


@pytest.mark.parametrize("case", ["dense", "moe"])
def test_quantize_swaps_a_llamas_block_linears_but_not_router_head_or_norms(case: str) -> None:
    config = CONFIGS[case]
    model = quantize(small_llama(config))
    int8 = [name for name, m in model.named_modules() if isinstance(m, Int8Linear)]
    assert int8 == expected_int8(config)
    assert type(model.lm_head) is nn.Linear and type(model.model.embed_tokens) is nn.Embedding
    if config.n_experts:
        routers = [b.mlp for b in model.blocks()]
        assert all(isinstance(m, MoE) and type(m.gate) is nn.Linear for m in routers), \
            "the router must stay float"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert quantization_of(model) == {"method": "int8-per-channel", "version": 1}
    n_weights = sum(m.in_features * m.out_features for n, m in model.named_modules()
                    if isinstance(m, Int8Linear))
    rows = sum(m.out_features for m in model.modules() if isinstance(m, Int8Linear))
    assert linear_weight_bytes(model) == n_weights + 4 * rows
    assert linear_weight_bytes(small_llama(config)) == 4 * n_weights


@pytest.mark.parametrize("case", ["dense", "moe"])
def test_int8_llama_logits_stay_within_the_gpt2_bound(case: str) -> None:
    """The bound tests/test_quantization_model.py states for GPT-2, on a 2-layer, 64-wide
    Llama (GQA; and with 4 experts, top-2): KL(float || int8) <= 1e-5 nats weight-only, 1e-4
    dynamic, |Δ logit| <= 2e-2 weight-only, the same greedy token at every position."""
    model = small_llama(CONFIGS[case])
    x = tokens(DENSE, (4, DENSE.block_size), seed=1)
    with torch.no_grad():
        want = model(x)[0]
        weight_only = quantize(copy.deepcopy(model))(x)[0]
        dynamic = quantize(copy.deepcopy(model), activations="dynamic")(x)[0]
    assert want.abs().max() > 4, "the test model's logits are too small to test against"
    p = want.log_softmax(-1)
    for name, got, kl_bound in (("weight-only", weight_only, 1e-5), ("dynamic", dynamic, 1e-4)):
        kl = (p.exp() * (p - got.log_softmax(-1))).sum(-1)
        assert kl.max() <= kl_bound, f"{name}: KL {kl.max():.2e} > {kl_bound}"
        assert torch.equal(got.argmax(-1), want.argmax(-1)), f"{name}: the greedy token moved"
    assert (weight_only - want).abs().max() <= 2e-2


@pytest.mark.parametrize("case", ["dense", "moe"])
def test_quantized_llama_checkpoint_round_trips(case: str, tmp_path: Path) -> None:
    """save_checkpoint writes int8 weights and float scales; load_checkpoint rebuilds the int8
    Llama, whose logits are the saved model's, bit for bit; a tied head stays tied."""
    config = CONFIGS[case].model_copy(update={"tie_word_embeddings": case == "dense"})
    model = quantize(small_llama(config))
    save_checkpoint(model, tmp_path / "int8")
    state = read_safetensors(tmp_path / "int8" / WEIGHTS_NAME)
    assert state["model.layers.0.self_attn.k_proj.weight"].dtype == torch.int8
    assert state["model.layers.0.self_attn.k_proj.scale"].dtype == torch.float32
    assert state["model.layers.0.mlp.gate.weight" if config.n_experts
                 else "model.embed_tokens.weight"].dtype == torch.float32
    loaded = load_checkpoint(tmp_path / "int8")
    assert isinstance(loaded, Llama) and quantization_of(loaded) is not None
    assert [n for n, m in loaded.named_modules() if isinstance(m, Int8Linear)] == \
        expected_int8(config)
    if config.tie_word_embeddings:
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight, "the tie is broken"
    x = tokens(config, (2, 16), seed=2)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], model(x)[0])
        quantize(loaded, "dynamic")
        assert torch.equal(loaded(x)[0], quantize(model, "dynamic")(x)[0])


# ----------------------------------------------------------------------------- LoRA

ALL_TARGETS = [*LLAMA_TARGETS, *LLAMA_MLP_TARGETS]


def hf_llama(seed: int) -> Any:
    """transformers' LlamaForCausalLM from its own config (GQA), every weight random."""
    import transformers
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        rms_norm_eps=1e-5, tie_word_embeddings=False, attn_implementation="eager",
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    hf = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # std 0.05: logits about ±1, as GPT-2's parity test (at std 0.3,
        for name, p in hf.named_parameters():  # ±7, the base models alone differ by 5e-6)
            norm = name.endswith("norm.weight")
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if norm else 0.05 * torch.randn_like(p))
    return hf.eval()


def peft_llama_and_ours(seed: int, targets: list[str], rslora: bool = False) -> tuple[Any, Llama]:
    """peft on a random LlamaForCausalLM (A and B random: not B = 0), and our Llama with its
    weights (``Llama.from_hf``) and LoRA on the same targets, peft's A and B copied in."""
    import peft
    hf = hf_llama(seed)
    ours = Llama.from_hf(hf).eval()
    config = peft.LoraConfig(target_modules=targets, r=4, lora_alpha=8, lora_dropout=0.0,
                             init_lora_weights=False, use_rslora=rslora)
    theirs = peft.get_peft_model(hf, config).eval()
    names = apply_lora(ours, r=4, alpha=8, targets=targets, rslora=rslora)
    copied = set()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if ".lora_B" in name:  # peft's random B (std ~0.3) moves the logits by ~1: a fifth
                p.mul_(0.2)  # keeps the activations O(1), where float32 parity means 1e-6
            if ".lora_" in name:
                key = name.removeprefix("base_model.model.").removesuffix(".default.weight")
                ours.get_parameter(key).copy_(p)
                copied.add(key)
    assert copied == {f"{n}.lora_{ab}" for n in names for ab in "AB"}, "layers differ from peft's"
    return theirs, ours


def assert_close(got: Tensor, want: Tensor, what: str, tol: float = PEFT_TOL) -> None:
    err = (got - want).abs().max().item()
    assert err <= tol, f"{what}: max |difference| {err:.2e} > {tol:.0e}"


def next_token_loss(logits: Tensor, idx: Tensor) -> Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), idx[:, 1:].reshape(-1))


@pytest.mark.parametrize("targets", [list(LLAMA_TARGETS), ALL_TARGETS], ids=["qkvo", "all"])
def test_llama_with_lora_matches_peft_before_and_after_training_and_merged(
        targets: list[str]) -> None:
    theirs, ours = peft_llama_and_ours(seed=3, targets=targets, rslora=targets == ALL_TARGETS)
    idx = tokens(DENSE, (3, 16), seed=4)
    base = Llama.from_hf(hf_llama(seed=3)).eval()
    with torch.no_grad():
        assert_close(ours(idx)[0], theirs(idx).logits, "Llama + LoRA vs peft")
    lora = [p for p in ours.parameters() if p.requires_grad]
    peft_lora = [p for p in theirs.parameters() if p.requires_grad]
    assert len(lora) == len(peft_lora) == 2 * len(targets) * 2
    opt_ours, opt_peft = torch.optim.SGD(lora, lr=0.2), torch.optim.SGD(peft_lora, lr=0.2)
    ours.train(), theirs.train()
    for step in range(3):
        batch = tokens(DENSE, (4, 16), seed=10 + step)
        opt_ours.zero_grad()
        next_token_loss(ours(batch)[0], batch).backward()
        opt_ours.step()
        opt_peft.zero_grad()
        next_token_loss(theirs(batch).logits, batch).backward()
        opt_peft.step()
    ours.eval(), theirs.eval()
    with torch.no_grad():
        trained = ours(idx)[0]
        assert_close(trained, theirs(idx).logits, "after 3 SGD steps on both")
        assert (trained - base(idx)[0]).abs().max() > 1e-2, "the adapter changed nothing"
        merge_lora(ours)
        merged_hf = theirs.merge_and_unload()
        assert_close(ours(idx)[0], merged_hf(idx).logits, "merged vs peft merge_and_unload")
        assert_close(ours(idx)[0], trained, "merged vs unmerged", 1e-5)  # W + ΔW rounded once
        unmerge_lora(ours)
        assert_close(ours(idx)[0], trained, "after unmerge_lora", 1e-5)
        exported = to_hf_model(unwrap_lora(ours))  # plain names again: the HF layout
        assert_close(exported(idx).logits, merged_hf(idx).logits, "exported merged model")


@pytest.mark.parametrize("case", ["dense", "moe"])
def test_llama_adapter_round_trips_and_refuses_another_arch(case: str, tmp_path: Path) -> None:
    """The default targets are q/k/v/o; with the SwiGLU names LoRA wraps every expert's
    projections and never the router. B = 0 leaves the logits unchanged; a saved adapter
    loaded onto the base gives the trained model's logits exactly; a GPT-2 adapter is refused
    on a Llama, naming the arch."""
    config = CONFIGS[case]
    base = small_llama(config)
    model = copy.deepcopy(base)
    x = tokens(config, (2, 12), seed=5)
    names = apply_lora(model, r=2, alpha=4, targets=ALL_TARGETS if config.n_experts else None)
    assert names == [n for n in expected_int8(config)
                     if config.n_experts or n.rpartition(".")[2] in LLAMA_TARGETS]
    assert not any(n.endswith("mlp.gate") for n in names)
    with torch.no_grad():
        assert torch.equal(model(x)[0], base(x)[0]), "B = 0 must leave the logits as they were"
        for name in names:
            model.get_parameter(f"{name}.lora_B").normal_(0, 0.1)
        want = model(x)[0]
    trainable, _ = trainable_parameters(model)
    assert trainable == sum(v.numel() for v in lora_state_dict(model).values())
    save_adapter(model, tmp_path / "adapter")
    fresh = copy.deepcopy(base)
    load_adapter(fresh, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(fresh(x)[0], want)
    assert all(isinstance(fresh.get_submodule(n), LoRALinear) for n in names)
    gpt = GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    apply_lora(gpt, r=2, alpha=4)
    save_adapter(gpt, tmp_path / "gpt2")
    with pytest.raises(ValueError, match="arch=gpt2, this model has arch=llama"):
        load_adapter(copy.deepcopy(base), tmp_path / "gpt2")


def test_lora_targets_by_arch_for_a_config() -> None:
    assert default_targets(small_llama(DENSE)) == LLAMA_TARGETS == default_targets("llama")
    assert default_targets("gpt2") == ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    check_lora_targets(ALL_TARGETS, "llama")
    check_lora_targets(["model.layers.*.self_attn.q_proj", "mlp.experts.*.up_proj"], "llama")
    check_lora_targets(["attn.c_attn", "transformer.h.1.mlp.c_proj"], "gpt2")
    for targets, arch, bad in ((["q_proj", "attn.c_attn"], "llama", "attn.c_attn"),
                               (["q_proj"], "gpt2", "q_proj"), (["mlp.gate"], "llama", "mlp.gate"),
                               (["lm_head"], "llama", "lm_head")):
        with pytest.raises(ValueError, match=f"LoRA target '{bad}' names no linear layer"):
            check_lora_targets(targets, arch)
    with pytest.raises(ValueError, match="unknown arch 'bert'"):
        check_lora_targets(["q_proj"], "bert")


# ----------------------------------------------------------------------------- the engine


def engine_llama(config: LlamaConfig) -> Llama:
    """float64 (tokens compared exactly across batch shapes), weights std 0.5: the choices
    depend on the context."""
    torch.manual_seed(0)
    model = Llama(config.model_copy(update={"block_size": 24})).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def requests(n: int) -> list[Request]:
    """Prompts of 1 to 5 tokens (rows at different rotary positions), greedy and sampled."""
    settings: list[dict[str, Any]] = [
        {"temperature": 0.0}, {"temperature": 0.9, "top_k": 10}, {"temperature": 1.2, "top_p": 0.8}]
    return [Request(tuple(range(1 + i % 4, 2 + i % 4 + i % 5)), 5 + i % 3, seed=i,
                    **settings[i % 3]) for i in range(n)]


@pytest.mark.parametrize("case", ["dense", "moe"])
def test_engine_batched_equals_each_request_alone_on_a_gqa_llama(case: str) -> None:
    model = engine_llama(CONFIGS[case])
    reqs = requests(7)
    alone = [run_batched(model, [r], 1)[0] for r in reqs]
    assert len({tuple(t) for t in alone}) > 3, "the model's outputs do not depend on the prompt"
    assert run_batched(model, reqs, max_batch=3, arrivals=[0, 0, 1, 1, 2, 4, 4]) == alone
    with Engine(model, max_batch=4) as engine:
        streams = [engine.submit(r) for r in reqs]
        assert [list(s) for s in streams] == alone


def test_int8_llama_runs_through_the_engine() -> None:
    """Weight-only int8 on a float32 GQA Llama: the engine's batched tokens are each request's
    alone (greedy), and every forward pass goes through the int8 layers."""
    torch.manual_seed(0)
    model = engine_llama(DENSE).float()
    quantize(model)
    calls = []
    handle = model.model.layers[0].self_attn.k_proj.register_forward_hook(
        lambda m, a, out: calls.append(type(m)))
    reqs = [Request(r.prompt, r.max_new_tokens, temperature=0.0) for r in requests(5)]
    alone = [run_batched(model, [r], 1)[0] for r in reqs]
    with Engine(model, max_batch=3) as engine:
        streams = [engine.submit(r) for r in reqs]
        assert [list(s) for s in streams] == alone
    handle.remove()
    assert calls and set(calls) == {Int8Linear}
