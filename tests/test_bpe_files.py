"""reference.bpe's files and command line.

* the tokenizer file: documented JSON fields, atomic writes, clear errors naming the bad field;
* tiktoken's ranks file: errors naming the line;
* GPT-2's ``vocab.json`` + ``merges.txt``, as written by Hugging Face ``tokenizers`` (the oracle
  writer) from the same ranks with ``transformers``' own byte-to-unicode table: loading them
  gives the tiktoken file's vocabulary and merges, and encodes as tiktoken does;
* ``python -m reference.bpe train | encode | inspect``.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tiktoken

from reference import atomic
from reference import bpe as ref
from tests.outcomes import ROOT

pytestmark = pytest.mark.bpe

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def ranks_path(shared_data: Path) -> Path:
    return shared_data / "gpt2" / "gpt2.tiktoken"


@pytest.fixture(scope="module")
def trained() -> ref.Tokenizer:
    text = f"low lower lowest{EOT}newer newest wider widest café 😀{EOT}" * 4
    vocab, merges = ref.train_bpe(text, 290, [EOT])
    return ref.Tokenizer(vocab, merges, [EOT])


# ----------------------------------------------------------------------------- tokenizer file


def test_saved_file_has_the_documented_fields(trained: ref.Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tok.json"
    trained.save(path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["format"] == "llm-from-scratch/bpe" and doc["version"] == 1
    assert doc["pattern"] == ref.GPT2_SPLIT_PATTERN
    assert doc["vocab"][97] == [97, base64.b64encode(b"a").decode()]
    assert [base64.b64decode(x) for x in doc["merges"][0]] == list(trained.merges[0])
    assert doc["special_tokens"] == {EOT: len(trained.vocab) - 1}
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"], "a temporary file was left"
    loaded = ref.Tokenizer.load(path)
    assert (loaded.vocab, loaded.merges, loaded.special_tokens) == (
        trained.vocab, trained.merges, trained.special_tokens)


def _corrupt(doc: dict[str, Any], field: str) -> None:
    if field == "format":
        doc["format"] = "minbpe"
    elif field == "version":
        doc["version"] = 2
    elif field == "pattern":
        doc["pattern"] = r"\w+"
    elif field == "vocab[3]":
        doc["vocab"][3][1] = "not base64!"
    elif field == "vocab[5]":
        doc["vocab"][5] = [5]
    elif field == "merges[2]":
        doc["merges"][2] = [base64.b64encode(b"zzz").decode(), doc["merges"][2][1]]
    elif field == "special_tokens":
        doc["special_tokens"] = {EOT: 3}
    elif field == "merges":
        del doc["merges"]


@pytest.mark.parametrize(
    "field",
    ["format", "version", "pattern", "vocab[3]", "vocab[5]", "merges[2]", "special_tokens",
     "merges"],
)
def test_load_names_the_malformed_field(trained: ref.Tokenizer, tmp_path: Path, field: str) -> None:
    path = tmp_path / "tok.json"
    trained.save(path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    _corrupt(doc, field)
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        ref.Tokenizer.load(path)


def test_load_rejects_a_file_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "tok.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"invalid JSON.*line 1"):
        ref.Tokenizer.load(path)
    with pytest.raises(FileNotFoundError):
        ref.Tokenizer.load(tmp_path / "missing.json")


def test_a_failed_save_leaves_the_old_file(trained: ref.Tokenizer, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tok.json"
    trained.save(path)
    before = path.read_bytes()

    def replace(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", replace)  # every write goes through reference.atomic
    with pytest.raises(OSError, match="disk full"):
        trained.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]


# ----------------------------------------------------------------------------- tiktoken file


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"IQ== 0\nIg== x\n", r":2: expected 'base64 rank'"),
        (b"IQ== 0\n!!!! 1\n", r":2: invalid base64"),
        (b"IQ== 0\nIQ== 1\n", r":2: token b'!' appears twice"),
        (b"IQ== 0\nIg== 5\n", r"ranks must be 0\.\.1"),
        (b"IQ== 0\n", r"no token for the single bytes \[0, 1,"),
    ],
)
def test_tiktoken_file_errors_name_the_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.tiktoken"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        ref.load_tiktoken_ranks(path)


def test_tiktoken_file_with_a_token_that_is_not_a_merge(tmp_path: Path) -> None:
    lines = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    lines.append(f"{base64.b64encode(b'abc').decode()} 256")  # no "ab" or "bc" to make it from
    path = tmp_path / "bad.tiktoken"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"b'abc' \(rank 256\) is not a merge"):
        ref.load_tiktoken_ranks(path)


# ----------------------------------------------------------------------------- GPT-2 files


@pytest.fixture(scope="module")
def gpt2_files(ranks_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """vocab.json + merges.txt written by Hugging Face tokenizers from the tiktoken ranks."""
    from tokenizers import models
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(table[b] for b in token)

    vocab, merges = ref.load_tiktoken_ranks(ranks_path)
    hf_vocab = {to_str(token): i for i, token in vocab.items()} | {EOT: 50256}
    hf_merges = [(to_str(a), to_str(b)) for a, b in merges]
    folder = tmp_path_factory.mktemp("gpt2")
    vocab_json, merges_txt = models.BPE(vocab=hf_vocab, merges=hf_merges).save(str(folder))
    return Path(vocab_json), Path(merges_txt)


def test_bytes_to_unicode_matches_transformers() -> None:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    assert ref.bytes_to_unicode() == bytes_to_unicode()
    assert ref.token_to_string(b" the\n") == "Ġthe" + "Ċ"


def test_gpt2_files_load_as_the_tiktoken_ranks(
    gpt2_files: tuple[Path, Path], ranks_path: Path, shared_data: Path
) -> None:
    vocab, merges = ref.load_gpt2_files(*gpt2_files)
    tk_vocab, tk_merges = ref.load_tiktoken_ranks(ranks_path)
    assert merges == tk_merges
    assert vocab == tk_vocab | {50256: EOT.encode()}
    tok = ref.Tokenizer.from_gpt2_files(*gpt2_files, special_tokens=[EOT])
    assert tok.special_tokens == {EOT: 50256}
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:100_000]
    enc = tiktoken.Encoding(name="gpt2-offline", pat_str=ref.GPT2_SPLIT_PATTERN,
                            mergeable_ranks={t: i for i, t in tk_vocab.items()},
                            special_tokens={EOT: 50256})
    assert tok.encode(text + EOT) == enc.encode(text + EOT, allowed_special="all")


def test_gpt2_files_errors_name_the_line(gpt2_files: tuple[Path, Path], tmp_path: Path) -> None:
    vocab_json, merges_txt = gpt2_files
    lines = merges_txt.read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "merges.txt"
    bad.write_text("\n".join([*lines[:5], "Ġt he extra", *lines[5:]]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges.txt:6: expected two tokens"):
        ref.load_gpt2_files(vocab_json, bad)
    bad.write_text("\n".join([*lines[:3], "zzzq qqqz"]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges.txt:4: token 'zzzq' is not in vocab.json"):
        ref.load_gpt2_files(vocab_json, bad)
    bad_vocab = tmp_path / "vocab.json"
    bad_vocab.write_text(json.dumps({"a": 0, "\u4e00": 1}), encoding="utf-8")
    with pytest.raises(ValueError, match="outside GPT-2's byte alphabet"):
        ref.load_gpt2_files(bad_vocab, merges_txt)


# ----------------------------------------------------------------------------- command line


def test_cli_train_encode_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reference.bpe.__main__ import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(f"low lower lowest{EOT}newer newest wider widest\n" * 50, encoding="utf-8")
    model = tmp_path / "tok.json"
    assert main(["train", str(corpus), "--vocab-size", "270", "--special", EOT,
                 "--processes", "1", "--out", str(model), "--no-progress"]) == 0
    assert "270 tokens" in capsys.readouterr().err
    tok = ref.Tokenizer.load(model)
    assert (tok.vocab, tok.merges) == ref.train_bpe(corpus.read_text(encoding="utf-8"), 270, [EOT])

    assert main(["encode", "--model", str(model), "--text", f"lowest newer{EOT}"]) == 0
    printed = [int(x) for x in capsys.readouterr().out.split()]
    assert printed == tok.encode(f"lowest newer{EOT}")
    assert main(["encode", "--model", str(model), "--no-special", "--input", str(corpus)]) == 0
    printed = [int(x) for x in capsys.readouterr().out.split()]
    assert printed == tok.encode(corpus.read_text(encoding="utf-8"), allowed_special=set())

    assert main(["inspect", "--model", str(model), "--limit", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == ["    0  [\\u0000]", "    1  [\\u0001]",
                                                    "    2  [\\u0002]"]
    assert main(["inspect", "--model", str(model)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 270 and out[-1] == f"  269  [{EOT}]  (special)"


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reference.bpe.__main__ import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello", encoding="utf-8")
    assert main(["train", str(corpus), "--vocab-size", "100", "--out", str(tmp_path / "t")]) == 2
    assert "error: vocab_size=100 is too small" in capsys.readouterr().err
    assert main(["encode", "--model", str(tmp_path / "nope.json"), "--text", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope.json" in err and err.count("\n") == 1
    assert main(["train", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "t")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("warning: the training text gives only 4 merges: the vocabulary has 260 "
                      "tokens, not the 300 asked for (every word is already one token; train on "
                      "more text for a larger vocabulary)"), err
    with pytest.raises(SystemExit):
        main(["encode", "--text", "x"])  # no tokenizer given: argparse's usage error


def test_cli_runs_as_a_module(ranks_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reference.bpe", "encode", "--tiktoken", str(ranks_path),
         "--text", f"Hello world{EOT}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["15496", "995", "50256"]
