"""The Llama-style architecture (``model.arch=llama``, ``reference/llama.py``) through everything
around a model: the trainer (train, resume, DDP), checkpoints, ``generate``, ``evaluate``, the
server; GPT-2 and its old checkpoints unchanged.

Oracles, none of them the code under test: an uninterrupted run for a resumed one (bit for bit,
as tests/test_runs.py holds GPT-2 to); one process on the combined batch for two DDP processes
under torchrun (as tests/test_trainer_ddp.py); the generation without the KV cache for the one
with it (greedy: the same text); the inference path alone (``stream_text``, no server) for the
server's completions, torch's ``log_softmax`` for the lm-eval adapter's log-likelihoods;
counting the router's choices by hand (``torch.topk`` of the routers' logits) for the expert
utilisation in metrics.jsonl; the model built from the config for a checkpoint written before
configs had an ``arch``; the base's own rows for a fine-tuned Llama's grown embedding and head.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file

from reference import cli
from reference.checkpoint import CONFIG_NAME, find_checkpoint, load_checkpoint, save_checkpoint
from reference.inference import SampleSettings, load, stream_text
from reference.llama import Llama, LlamaConfig
from reference.model import GPT, GPTConfig
from reference.server.app import create_app
from reference.tasks import reverse, write_jsonl
from reference.tokenizers import META_NAME, CharTokenizer
from reference.trainer.config import load_config
from reference.trainer.fsdp import plain_copy
from reference.trainer.loop import Trainer, prepare_data
from reference.trainer.monitor import read_metrics
from tests.outcomes import ROOT
from tests.test_server_api import AUTH, running, server_settings, sse_data
from tests.test_trainer_ddp import _free_port

pytestmark = pytest.mark.trainer

TINY = ["data.source=markov", "data.markov_tokens=20000", "train.device=cpu", "train.threads=1",
        "model.arch=llama", "model.n_layer=1", "model.n_head=2", "model.n_kv_head=1",
        "model.n_embd=16", "model.block_size=16", "train.batch_size=4", "train.warmup_steps=1",
        "train.eval_interval=4", "train.eval_steps=1", "train.log_interval=2",
        "train.progress=false", "train.tensorboard=false", "train.plot=false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(find_checkpoint(run) / "model.safetensors"))


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


# ---------------------------------------------------------------- the command line, end to end


def test_a_llama_run_trains_resumes_generates_and_is_evaluated(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, data = tmp_path / "run", f"data.dir={tmp_path / 'data'}"
    proc = subprocess.run(
        [sys.executable, "-m", "reference", "train", f"train.out_dir={run}", data, *TINY,
         "train.max_steps=4", "--no-sample"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Llama (n_kv_head 1)" in proc.stdout + proc.stderr
    saved = json.loads((find_checkpoint(run) / CONFIG_NAME).read_text())["config"]
    assert saved["arch"] == "llama" and saved["n_kv_head"] == 1
    model = load(run).model
    assert isinstance(model, Llama) and model.config.n_kv_head == 1

    # resume to step 6 == 6 steps without a stop (the oracle: an uninterrupted run)
    assert cli.main(["resume", str(run), "train.max_steps=6", "--no-sample"]) == 0
    straight = tmp_path / "straight"
    assert cli.main(["train", f"train.out_dir={straight}", data, *TINY, "train.max_steps=6",
                     "train.decay_steps=4", "--no-sample"]) == 0
    resumed, reference = _weights(run), _weights(straight)
    assert resumed.keys() == reference.keys() and "lm_head.weight" in resumed  # untied
    for name, tensor in reference.items():
        assert torch.equal(resumed[name], tensor), f"{name}: the resumed run differs"

    # a run's arch cannot change on resume: one line
    capsys.readouterr()
    assert cli.main(["resume", str(run), "model.arch=gpt2", "train.max_steps=8"]) != 0
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "model.arch (llama -> gpt2)" in lines[0], lines

    # greedy text: the KV cache (n_kv_head=1 heads per row) changes nothing
    texts = []
    for flags in ([], ["--no-cache"]):
        assert cli.main(["generate", str(run), "-p", "abc", "-n", "24", "-t", "0", *flags]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and len(texts[0].strip()) > 3

    # the evaluation report describes the architecture and counts its parameters
    assert cli.main(["evaluate", str(run), "--max-new-tokens", "8", "--max-chars", "3000",
                     "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    row = report["runs"][0]
    assert row["model"].startswith("llama (n_kv_head 1): 1 layers, 2 heads, 16 wide")
    assert row["parameters"] == sum(p.numel() for p in model.parameters())


def test_a_field_of_the_other_architecture_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = f"train.out_dir={tmp_path / 'run'}"
    for overrides, named in (
        (["model.n_kv_head=2"], "model.n_kv_head is not a field of a model.arch=gpt2 model "
                                "(it is llama's: set model.arch=llama"),
        (["model.arch=llama", "model.bias=true"], "model.bias is not a field of a "
                                                  "model.arch=llama model"),
        (["model.arch=llama", "model.n_kv_head=3"], "n_kv_head 3 must divide n_head 4"),
        (["model.arch=llama", "model.n_expert=4"], "'model.n_expert' (did you mean "
                                                   "'model.n_experts'?)"),
        (["model.arch=mamba"], "model.arch 'mamba' is not a known architecture (gpt2, llama)"),
    ):
        assert cli.main(["train", out, *overrides, "--dry-run"]) != 0
        lines = _error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and named in lines[0], (overrides, lines)
    assert not (tmp_path / "run").exists()


def test_the_shipped_llama_and_moe_configs_are_llama_models() -> None:
    dense = load_config(ROOT / "configs" / "llama_char.yaml").model
    moe = load_config(ROOT / "configs" / "moe_char.yaml").model
    fast = load_config(ROOT / "configs" / "shakespeare_char_fast.yaml")
    assert isinstance(dense, LlamaConfig) and dense.n_kv_head == 2 and not dense.n_experts
    assert isinstance(moe, LlamaConfig) and moe.n_experts == 4 and moe.n_experts_per_tok == 2
    for path in ("llama_char.yaml", "moe_char.yaml"):  # the fast recipe, another model
        config = load_config(ROOT / "configs" / path)
        assert config.data == fast.data
        assert config.train.model_dump(exclude={"out_dir"}) == \
            fast.train.model_dump(exclude={"out_dir"})


# ---------------------------------------------------------------- mixture of experts


def test_a_moe_run_logs_each_layers_expert_shares_at_log_interval(tmp_path: Path) -> None:
    config = load_config(overrides=[
        f"train.out_dir={tmp_path / 'moe'}", f"data.dir={tmp_path / 'data'}", *TINY,
        "model.n_layer=2", "model.n_experts=4", "model.n_experts_per_tok=2",
        "train.max_steps=4", "train.log_interval=2"])
    trainer = Trainer(config, progress=False)
    routed: list[torch.Tensor] = []  # the oracle: each training pass's top-2, counted by hand

    def count(module: torch.nn.Module, args: object, output: object) -> None:
        if trainer.model.training:
            logits = torch.stack([block.router_logits for block in trainer.model.blocks()])
            picks = logits.topk(2, dim=-1).indices  # (n_layer, B*T, 2)
            routed.append(torch.stack([torch.bincount(p.flatten(), minlength=4)
                                       for p in picks]))

    trainer.model.register_forward_hook(count)
    trainer.fit()
    train = [r for r in read_metrics(tmp_path / "moe" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4]
    for i, record in enumerate(train):  # each record covers the 2 steps since the last one
        counts = (routed[2 * i] + routed[2 * i + 1]).double()
        expected = counts / counts.sum(dim=1, keepdim=True)
        torch.testing.assert_close(torch.tensor(record["expert_fraction"], dtype=torch.double),
                                   expected, rtol=0, atol=1e-6)  # 6 decimals in the log
        balance = counts.amax(dim=1) / counts.mean(dim=1)
        torch.testing.assert_close(torch.tensor(record["expert_balance"], dtype=torch.double),
                                   balance, rtol=0, atol=1e-6)
    dense = load_config(overrides=[f"train.out_dir={tmp_path / 'dense'}",
                                   f"data.dir={tmp_path / 'data'}", *TINY, "train.max_steps=2"])
    Trainer(dense, progress=False).fit()
    record = read_metrics(tmp_path / "dense" / "metrics.jsonl")[0]
    assert "expert_fraction" not in record and "expert_balance" not in record


# ---------------------------------------------------------------- checkpoints


def test_a_checkpoint_without_arch_loads_as_gpt_and_a_bad_one_is_one_line(
        tmp_path: Path) -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8)).eval()
    save_checkpoint(gpt, tmp_path / "old")
    path = tmp_path / "old" / CONFIG_NAME
    raw = json.loads(path.read_text())
    del raw["config"]["arch"]  # as every checkpoint written before there was a choice
    path.write_text(json.dumps(raw))
    old = load_checkpoint(tmp_path / "old")
    idx = torch.tensor([[1, 2, 3, 4]])
    assert isinstance(old, GPT) and torch.equal(old(idx)[0], gpt(idx)[0])

    llama = LlamaConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8).model_dump()
    for config, named in (({**raw["config"], "arch": "rwkv"}, "config.arch 'rwkv' is not a "
                                                             "known architecture"),
                          ({**raw["config"], "arch": "llama"}, "missing config fields "),
                          ({**llama, "bias": False}, "unknown key 'config.bias'")):
        path.write_text(json.dumps({**raw, "config": config}))
        with pytest.raises(ValueError) as e:
            load_checkpoint(tmp_path / "old")
        assert "\n" not in str(e.value), "one line"
        assert named in str(e.value) and str(path) in str(e.value)
    small = {k: v for k, v in llama.items() if k != "n_kv_head"}
    path.write_text(json.dumps({**raw, "config": small}))
    with pytest.raises(ValueError, match=r"missing config fields \['n_kv_head'\] \(arch llama\)"):
        load_checkpoint(tmp_path / "old")


@pytest.mark.parametrize("tied", [False, True])
def test_a_llama_checkpoint_round_trips_tied_or_not(tmp_path: Path, tied: bool) -> None:
    torch.manual_seed(0)
    model = Llama(LlamaConfig(block_size=8, vocab_size=11, n_layer=1, n_head=4, n_kv_head=2,
                              n_embd=16, n_experts=2, n_experts_per_tok=1,
                              tie_word_embeddings=tied)).eval()
    save_checkpoint(model, tmp_path / "ck")
    stored = load_file(str(tmp_path / "ck" / "model.safetensors"))
    assert ("lm_head.weight" in stored) is not tied  # a tied head is the embedding, stored once
    again = load_checkpoint(tmp_path / "ck")
    assert isinstance(again, Llama)
    assert (again.lm_head.weight is again.model.embed_tokens.weight) is tied
    copy = plain_copy(model.config, model.state_dict())  # what FSDP's rank 0 saves and samples
    assert (copy.lm_head.weight is copy.model.embed_tokens.weight) is tied
    idx = torch.tensor([[1, 2, 3, 4, 5]])
    assert torch.equal(again(idx)[0], model(idx)[0])
    assert torch.equal(copy.eval()(idx)[0], model(idx)[0])


# ---------------------------------------------------------------- DDP under torchrun


def _ddp_settings(tmp_path: Path, out: str, batch_size: int) -> list[str]:
    return [f"train.out_dir={tmp_path / out}", f"data.dir={tmp_path / 'data'}", *TINY,
            # experts: routing is per token, so it shards exactly; the load-balancing loss is
            # each process's own (as per device in Mixtral), not the combined batch's: off here
            "model.n_experts=3", "model.n_experts_per_tok=2", "model.router_aux_loss_coef=0",
            f"train.batch_size={batch_size}",
            "train.grad_accum=2", "train.max_steps=3", "train.lr=1e-2", "train.eval_interval=3",
            "train.eval_steps=2"]


@pytest.mark.slow
def test_two_ddp_processes_train_a_llama_as_one_process_on_the_combined_batch(
        tmp_path: Path) -> None:
    single_config = load_config(overrides=_ddp_settings(tmp_path, "single", batch_size=4))
    prepare_data(single_config, progress=False)  # both runs read the same token file
    env = {**ENV, "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "reference",
           "train", *_ddp_settings(tmp_path, "ddp", batch_size=2), "--no-sample"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "2 process(es)" in proc.stdout + proc.stderr

    single = Trainer(single_config, progress=False)
    single.fit()
    ddp = _weights(tmp_path / "ddp")
    state = single.model.state_dict()
    assert ddp.keys() == state.keys()  # untied: every weight stored
    for name, tensor in state.items():
        # 1e-5: the two runs sum the gradients in different orders (as tests/test_trainer_ddp)
        torch.testing.assert_close(ddp[name], tensor, rtol=0, atol=1e-5,
                                   msg=f"{name}: 2 DDP processes differ from 1 process")


# ---------------------------------------------------------------- the server


def test_the_server_and_the_lm_eval_adapter_serve_a_llama_run(tmp_path: Path) -> None:
    tokenizer = CharTokenizer("abcdefgh :")
    torch.manual_seed(0)
    model = Llama(LlamaConfig(block_size=48, vocab_size=tokenizer.vocab_size, n_layer=2,
                              n_head=4, n_kv_head=2, n_embd=16))
    run = tmp_path / "llamarun"
    save_checkpoint(model, run)
    (run / META_NAME).write_text(json.dumps({"tokenizer": tokenizer.to_dict()}))
    loaded = load(run)
    ask = {"prompt": "abc", "max_tokens": 12, "temperature": 0.9, "seed": 5}
    sample = SampleSettings(prompt="abc", max_new_tokens=12, temperature=0.9, top_p=None, seed=5)
    expected = "".join(stream_text(loaded.model, loaded.tokenizer, sample))  # no server
    with (running(create_app(server_settings(run))) as url,
          httpx.Client(base_url=url, headers=AUTH, timeout=60) as client):
        body = client.post("/v1/completions", json=ask).json()
        streamed = client.post("/v1/completions", json={**ask, "stream": True})
        two = client.post("/v1/completions", json={**ask, "n": 2}).json()
    assert body["choices"][0]["text"] == expected and len(expected) > 0
    chunks = [json.loads(e)["choices"][0]["text"] for e in sse_data(streamed.text)[:-1]]
    assert "".join(chunks) == expected
    assert two["choices"][0]["text"] == expected  # batched beside another row: the same

    # lm-eval's adapter: log p(continuation | context) == torch's log_softmax of one forward pass
    harness = pytest.importorskip("reference.evaluation.harness")
    from lm_eval.api.instance import Instance

    lm = harness.LLMFS(loaded=loaded, batch_size=2)
    [(logp, _)] = lm.loglikelihood([Instance(request_type="loglikelihood", doc={},
                                             arguments=("abc", "dea"), idx=0)])
    ids = tokenizer.encode("abcdea")
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids]))[0][0]  # (T, V)
    expected = torch.log_softmax(logits, -1)[2:-1].gather(1, torch.tensor(ids[3:])[:, None]).sum()
    assert abs(logp - float(expected)) <= 1e-5  # fp32: the same forward pass, summed


# ---------------------------------------------------------------- fine-tuning a Llama base


def test_lora_fine_tuning_a_llama_grows_the_untied_head_and_resumes_bit_for_bit(
        tmp_path: Path) -> None:
    base, data = tmp_path / "base", tmp_path / "reverse.jsonl"
    write_jsonl(data, reverse(30, seed=1))
    assert cli.main(["train", f"train.out_dir={base}", "data.source=builtin", *TINY[2:],
                     "model.block_size=32", "train.max_steps=2", "--no-sample"]) == 0
    tune = ["--no-sample", *TINY[2:], "train.max_steps=2", "train.lr=1e-2",
            "finetune.eval_examples=2", "finetune.lora_r=2"]
    tune = [s for s in tune if not s.startswith("model.")]
    assert cli.main(["finetune", str(base), str(data), f"train.out_dir={tmp_path / 'a'}",
                     *tune]) == 0
    assert cli.main(["resume", str(tmp_path / "a"), "train.max_steps=4", "--no-sample"]) == 0
    assert cli.main(["finetune", str(base), str(data), f"train.out_dir={tmp_path / 'b'}",
                     *tune, "train.max_steps=4", "train.decay_steps=2"]) == 0

    before, after = _weights(base), _weights(tmp_path / "b")
    n_base = before["lm_head.weight"].size(0)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):  # 4 chat tokens' rows each
        assert after[name].shape == (n_base + 4, 16)
        assert torch.equal(after[name][:n_base], before[name]), f"{name}: base rows changed"
    adapter = json.loads((find_checkpoint(tmp_path / "b") / "adapter_config.json").read_text())
    assert any("q_proj" in t for t in json.dumps(adapter).split('"'))  # Llama's own targets
    resumed = _weights(tmp_path / "a")
    for name, tensor in after.items():
        assert torch.equal(resumed[name], tensor), f"{name}: the resumed run differs"
