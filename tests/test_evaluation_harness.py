"""lm-eval on the reference model (``reference/evaluation/harness.py``), offline.

The oracle is lm-eval's own Hugging Face backend (``HFLM``) on a ``GPT2LMHeadModel`` with the same
weights (``reference.hf.save_hf``) and GPT-2's tokenizer rebuilt from the tiktoken ranks with the
``tokenizers`` library: the same three local tasks (JSONL data files written here, task YAMLs with
``dataset_path: json``), one per request type, give the same numbers on both backends:

| request type | task | compared |
|---|---|---|
| loglikelihood | multiple choice | acc, acc_norm, every choice's log-likelihood and is_greedy |
| loglikelihood_rolling | like wikitext | word/byte perplexity, bits_per_byte, each doc's |
| generate_until | greedy, until + max_gen_toks | every generated string, exact_match |

Nothing reaches the network: the hub and datasets are offline, and a socket connection fails
the test.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lm_eval
import lm_eval.evaluator
import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

import reference.evaluation.harness as harness  # lm-eval: a dev dependency, never skipped
from reference.checkpoint import save_checkpoint
from reference.hf import save_hf
from reference.inference import load
from reference.model import GPT, GPTConfig
from reference.tokenizers import META_NAME, CharTokenizer, gpt2_tokenizer

pytestmark = [pytest.mark.evaluation, pytest.mark.slow]

EOT = "<|endoftext|>"
BLOCK = 24  # small, so that texts span several windows and contexts are cut from the left
REL = 1e-5  # the brief's tolerance; both backends run the same float32 arithmetic

MC_DOCS = [
    {"query": "The capital of France is", "choices": ["Paris", "a small town by the sea", "Rome"],
     "label": 0},
    {"query": "Water boils at", "choices": ["one hundred degrees", "cold", "7"], "label": 2},
    {"query": "A long context that goes on and on, past the block size of this tiny model, "
              "and then asks: the colour of the sky is", "choices": ["blue", "green"],
     "label": 0},
    {"query": "Two plus two equals  ", "choices": ["four", "five", "twenty-two"], "label": 0},
    {"query": "Once upon a time", "choices": ["hating hating", "Cadillac"], "label": 1},
]  # lm-eval puts " " before each choice; the last doc's first choice is the model's greedy text
PPL_DOCS = [
    {"text": "It was the best of times, it was the worst of times, it was the age of wisdom, it "
             "was the age of foolishness, it was the epoch of belief."},
    {"text": "Short."},
    {"text": "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, "
             "speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?"},
]
GEN_DOCS = [
    {"prompt": "Once upon a time", "answer": " there"},
    {"prompt": "Question: what is 2 + 2?\nAnswer:", "answer": " 4"},
    {"prompt": "A very long prompt, longer than the context left after the room kept for the "
               "generated tokens, so it is cut from the left:", "answer": " yes"},
]

TASKS = {
    "llmfs_mc": ("mc.jsonl", MC_DOCS, """
output_type: multiple_choice
doc_to_text: "{{query}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""),
    "llmfs_ppl": ("ppl.jsonl", PPL_DOCS, """
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""),
    "llmfs_gen": ("gen.jsonl", GEN_DOCS, """
output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""),
}


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    """Any socket connection during these tests is a failure. (And lm-eval's report of the
    machine it ran on, two seconds of subprocesses per evaluation, is skipped.)"""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a test tried to reach the network: {args}")

    with pytest.MonkeyPatch.context() as mp:
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            mp.setenv(name, "1")
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)
        yield


def hf_gpt2_tokenizer(ranks: Path) -> Any:
    """HF's GPT-2 tokenizer rebuilt offline from the tiktoken ranks (byte-level BPE)."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from reference.bpe import load_tiktoken_ranks

    table = bytes_to_unicode()
    vocab, merges = load_tiktoken_ranks(str(ranks))
    hf_vocab = {"".join(table[b] for b in t): i for i, t in vocab.items()} | {EOT: 50256}
    hf_merges = [("".join(table[b] for b in a), "".join(table[b] for b in c)) for a, c in merges]
    tk = HFTokenizer(models.BPE(vocab=hf_vocab, merges=hf_merges))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=EOT, bos_token=EOT,
                                   unk_token=EOT)


def random_gpt(vocab_size: int, seed: int = 0) -> GPT:
    """A tiny GPT with weights large enough for peaked predictions (no near-ties in argmax)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=BLOCK, vocab_size=vocab_size, n_layer=2, n_head=2,
                          n_embd=16, dropout=0.0, bias=True))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def gpt2_pair(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(our checkpoint directory, a Hugging Face directory) holding the same tiny GPT-2."""
    root = tmp_path_factory.mktemp("harness")
    model = random_gpt(50257)
    ours, hf = root / "ours", root / "hf"
    save_checkpoint(model, ours)
    tok = gpt2_tokenizer(shared_data / "gpt2" / "gpt2.tiktoken")
    tok.save(ours)
    (ours / META_NAME).write_text(json.dumps({"tokenizer": tok.to_dict()}))
    save_hf(model, hf)
    hf_gpt2_tokenizer(shared_data / "gpt2" / "gpt2.tiktoken").save_pretrained(hf)
    return ours, hf


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three task YAMLs, each over a JSONL data file beside it."""
    root = tmp_path_factory.mktemp("tasks")
    for name, (data, docs, body) in TASKS.items():
        (root / data).write_text("".join(json.dumps(d) + "\n" for d in docs))
        head = (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n"
                f"  data_files:\n    test: {root / data}\n  cache_dir: {root / 'cache'}\n"
                "test_split: test\n")
        (root / f"{name}.yaml").write_text(head + body)
    return root


def run(model: Any, task_dir: Path) -> dict[str, Any]:
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=model, tasks=list(TASKS),
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        num_fewshot=0, bootstrap_iters=0, log_samples=True, random_seed=0)


@pytest.fixture(scope="module")
def both(gpt2_pair: tuple[Path, Path], task_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """lm-eval's results on (our backend, lm-eval's HFLM) for the same weights."""
    from lm_eval.models.huggingface import HFLM

    ours_dir, hf_dir = gpt2_pair
    ours = run(harness.LLMFS(ours_dir, batch_size=3), task_dir)
    theirs = run(HFLM(pretrained=str(hf_dir), device="cpu", batch_size=1, dtype="float32"),
                 task_dir)
    return ours, theirs


def responses(results: dict[str, Any], task: str) -> list[Any]:
    """Each document's raw responses, in document order."""
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [s["resps"] for s in samples]


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-6)


def test_multiple_choice_matches_the_hf_backend(both: tuple[dict[str, Any], dict[str, Any]],
                                                ) -> None:
    ours, theirs = both
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["llmfs_mc"][metric] == theirs["results"]["llmfs_mc"][metric]
    for mine, hf in zip(responses(ours, "llmfs_mc"), responses(theirs, "llmfs_mc"), strict=True):
        for [(ll, greedy)], [(ll_hf, greedy_hf)] in zip(mine, hf, strict=True):
            assert close(ll, ll_hf), (ll, ll_hf)
            assert greedy == greedy_hf
    [(_, greedy)] = responses(ours, "llmfs_mc")[-1][0]
    assert greedy, "the model's own greedy continuation must be reported as greedy"


def test_rolling_perplexity_matches_the_hf_backend(both: tuple[dict[str, Any], dict[str, Any]],
                                                   ) -> None:
    ours, theirs = both
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        a, b = ours["results"]["llmfs_ppl"][metric], theirs["results"]["llmfs_ppl"][metric]
        assert close(a, b), (metric, a, b)
    for [[mine]], [[hf]] in zip(responses(ours, "llmfs_ppl"), responses(theirs, "llmfs_ppl"),
                                strict=True):
        assert close(mine, hf), (mine, hf)


def test_generate_until_matches_the_hf_backend(both: tuple[dict[str, Any], dict[str, Any]],
                                               ) -> None:
    ours, theirs = both
    assert responses(ours, "llmfs_gen") == responses(theirs, "llmfs_gen")
    assert (ours["results"]["llmfs_gen"]["exact_match,none"]
            == theirs["results"]["llmfs_gen"]["exact_match,none"])
    assert any(r[0] for r in responses(ours, "llmfs_gen")), "some text must be generated"


def requests(kind: str, *args: tuple[Any, ...]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]


def oracle_logprob(model: GPT, context: list[int], continuation: list[int]) -> float:
    """float64 log p(continuation | context) with the input cut to the last block_size ids."""
    ids = (context + continuation)[-(BLOCK + 1) :]
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]))[0][0].double()
    logp = F.log_softmax(logits, dim=-1)
    n = len(continuation)
    rows = range(len(ids) - 1 - n, len(ids) - 1)
    return float(sum(logp[r, ids[r + 1]] for r in rows))


def test_loglikelihood_is_the_sum_of_the_continuation_logprobs_cut_from_the_left(
    gpt2_pair: tuple[Path, Path],
) -> None:
    lm = harness.LLMFS(gpt2_pair[0], batch_size=2)
    tok, model = lm.tokenizer, lm.model
    pairs = [("Hello", " world"), ("x " * 40, "and a much longer continuation here"),
             ("The end ", "of it")]
    got = lm.loglikelihood(requests("loglikelihood", *pairs))
    single = harness.LLMFS(loaded=lm.loaded, batch_size=1).loglikelihood(
        requests("loglikelihood", *pairs))
    for (ctx, cont), (ll, _), (ll1, _) in zip(pairs, got, single, strict=True):
        stripped = ctx.rstrip()  # trailing spaces move to the continuation, as in lm-eval
        whole, head = tok.encode(stripped + ctx[len(stripped):] + cont), tok.encode(stripped)
        expected = oracle_logprob(model, head, whole[len(head):])
        assert close(ll, expected), (ctx, cont, ll, expected)
        assert close(ll, ll1), "the batch must not change a request's score"


def test_rolling_scores_every_token_once_after_the_end_of_text_token(
    gpt2_pair: tuple[Path, Path],
) -> None:
    lm = harness.LLMFS(gpt2_pair[0])
    text = "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3  # several windows
    ids = lm.tokenizer.encode(text)
    assert len(ids) > 2 * BLOCK
    [total] = lm.loglikelihood_rolling(requests("loglikelihood_rolling", (text,)))
    # lm-eval's windows: ids[k*B:(k+1)*B] is scored with the ids before it as context, cut
    # to block_size tokens of input (1 token of context for a full window; the first window's
    # context is <|endoftext|>)
    expected = sum(oracle_logprob(lm.model, [50256, *ids[:start]], ids[start : start + BLOCK])
                   for start in range(0, len(ids), BLOCK))
    assert close(total, expected), (total, expected)


def test_rolling_agrees_with_token_nlls_with_stride_equal_to_context(
    gpt2_pair: tuple[Path, Path],
) -> None:
    """On <|endoftext|> + the text, lm-eval's disjoint windows are ``perplexity.token_nlls`` with
    stride = context = block_size, when the windows are full (a partial last window has more
    context in lm-eval's layout): one window, and exactly two."""
    from reference.evaluation.perplexity import token_nlls  # (the package exports a function
    # of the module's name, so `import ... as` would bind that function)

    lm = harness.LLMFS(gpt2_pair[0])
    long = lm.tokenizer.encode(PPL_DOCS[2]["text"] + PPL_DOCS[0]["text"])[: 2 * BLOCK]
    assert len(long) == 2 * BLOCK
    for ids in (lm.tokenizer.encode("To be, or not to be, that is the question."), long):
        text = lm.tokenizer.decode(ids)
        assert lm.tokenizer.encode(text) == ids
        [total] = lm.loglikelihood_rolling(requests("loglikelihood_rolling", (text,)))
        nlls, _ = token_nlls(lm.model, [50256, *ids], context=BLOCK, stride=BLOCK)
        assert close(total, -float(nlls.sum())), (len(ids), total, -float(nlls.sum()))


@pytest.fixture(scope="module")
def char_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A character-level checkpoint: a tokenizer without an end-of-text token."""
    directory = tmp_path_factory.mktemp("char")
    tok = CharTokenizer("abcdefghij .")
    save_checkpoint(random_gpt(tok.vocab_size, seed=1), directory)
    (directory / META_NAME).write_text(json.dumps({"tokenizer": tok.to_dict()}))
    return directory


def test_without_end_of_text_the_first_token_is_the_context(char_run: Path) -> None:
    lm = get_model("llmfs").create_from_arg_string(f"path={char_run},batch_size=2",
                                                   {"device": "cpu"})
    text = "abc def ghij. " * 4  # several windows of BLOCK characters
    [rolling] = lm.loglikelihood_rolling(requests("loglikelihood_rolling", (text,)))
    ids = lm.tok_encode(text)
    expected = sum(oracle_logprob(lm.model, ids[:s], ids[s : s + BLOCK])
                   for s in range(1, len(ids), BLOCK))
    assert close(rolling, expected)
    [(empty, _), (given, _)] = lm.loglikelihood(
        requests("loglikelihood", ("", "abc"), ("a", "bc")))
    assert empty == given


def test_generate_until_cuts_at_until_and_checks_its_options(char_run: Path) -> None:
    lm = harness.LLMFS(char_run)
    [free] = lm.generate_until(requests("generate_until", ("abc", {"max_gen_toks": 10})))
    assert len(free) == 10
    stop = free[3]
    [cut] = lm.generate_until(requests("generate_until",
                                       ("abc", {"max_gen_toks": 10, "until": [stop]})))
    assert cut == free.split(stop)[0]
    options = [{"max_gen_toks": 10, "temperature": 1.0, "top_k": 1},  # top-1 sampling: greedy
               {"max_gen_toks": 10, "temperature": 0.8, "do_sample": False}]
    assert lm.generate_until(requests("generate_until", *(("abc", o) for o in options))) == [
        free, free]
    torch.manual_seed(0)
    sampled = lm.generate_until(requests("generate_until", ("abc", {"temperature": 1.0})))
    assert len(sampled[0]) == BLOCK // 2, "the default max_gen_toks: half the block size here"
    torch.manual_seed(0)
    assert lm.generate_until(requests("generate_until", ("abc", {"temperature": 1.0}))) == sampled
    with pytest.raises(ValueError, match="max_gen_toks 24"):
        lm.generate_until(requests("generate_until", ("abc", {"max_gen_toks": BLOCK})))
    with pytest.raises(ValueError, match="num_beams"):
        lm.generate_until(requests("generate_until", ("abc", {"num_beams": 2})))


def test_model_args_are_checked(char_run: Path) -> None:
    with pytest.raises(ValueError, match="'auto'"):
        get_model("llmfs").create_from_arg_string(f"path={char_run},batch_size=auto")
    with pytest.raises(ValueError, match="path=RUN_DIR"):
        harness.LLMFS()


def test_evaluate_runs_local_tasks_by_name(char_run: Path, task_dir: Path) -> None:
    mc = task_dir / "char_mc.jsonl"
    mc.write_text(json.dumps({"query": "abc", "choices": [" def", " ghij"], "label": 0}) + "\n")
    (task_dir / "char_mc.yaml").write_text(
        (task_dir / "llmfs_mc.yaml").read_text().replace("llmfs_mc", "char_mc")
        .replace(str(task_dir / "mc.jsonl"), str(mc)))
    results = harness.evaluate(char_run, ["char_mc"], include_path=task_dir,
                               include_defaults=False, bootstrap_iters=0)
    lm = harness.LLMFS(loaded=load(char_run))
    a, b = lm.loglikelihood(requests("loglikelihood", ("abc", " def"), ("abc", " ghij")))
    assert results["results"]["char_mc"]["acc,none"] == float(a[0] > b[0])
    with pytest.raises(ValueError, match="no_such_task"):
        harness.evaluate(char_run, ["no_such_task"], include_path=task_dir,
                         include_defaults=False)
