"""The library's chat format and fine-tuning data, beyond the spec: a chat tokenizer stored in a
``meta.json`` and read back, the JSONL readers and their one-line errors naming ``file:line``,
and the cut of long conversations. (The template, the targets and the losses are specified in
specs/test_finetune.py, on the library and the worked solutions alike.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reference.bpe import Tokenizer as BPE
from reference.bpe import train_bpe
from reference.chat import SPECIALS, ChatTokenizer, encode_chat, render
from reference.finetune import encode_conversations, read_conversations, to_messages
from reference.tokenizers import (
    META_NAME,
    BPETokenizer,
    CharTokenizer,
    from_description,
    load_tokenizer,
)

TEXT = "<|system|>be terse<|end|><|user|>abc é<|end|><|assistant|>cba<|end|>"


def write_meta(directory: Path, tokenizer: ChatTokenizer) -> None:
    (directory / META_NAME).write_text(json.dumps({"tokenizer": tokenizer.to_dict()}))


def test_a_chat_tokenizer_over_characters_round_trips_through_meta_json(tmp_path: Path) -> None:
    tok = ChatTokenizer(CharTokenizer("abcdefhrst é"))
    assert tok.to_dict() == {"kind": "chat", "base": {"kind": "char", "chars": " abcdefhrsté"},
                             "specials": list(SPECIALS)}
    write_meta(tmp_path, tok)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, ChatTokenizer)
    assert loaded.vocab_size == tok.vocab_size == 12 + 4
    assert loaded.encode(TEXT) == tok.encode(TEXT)
    assert loaded.decode(torch.tensor(tok.encode(TEXT))) == TEXT  # a tensor of ids decodes too


def test_a_chat_tokenizer_over_bpe_round_trips_with_its_tokenizer_file(tmp_path: Path) -> None:
    vocab, merges = train_bpe("be terse, abc cba é " * 20, 270)
    base = BPETokenizer(BPE(vocab, merges))
    tok = ChatTokenizer(base)
    base.save(tmp_path)  # tokenizer.json beside meta.json
    write_meta(tmp_path, tok)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, ChatTokenizer) and isinstance(loaded.base, BPETokenizer)
    assert loaded.encode(TEXT) == tok.encode(TEXT)
    assert loaded.special_ids == {s: base.vocab_size + i for i, s in enumerate(SPECIALS)}


def test_a_chat_description_with_a_bad_base_names_the_file(tmp_path: Path) -> None:
    meta = tmp_path / META_NAME
    with pytest.raises(ValueError, match=r"meta\.json: 'tokenizer' must describe.*'kind': 'x'"):
        from_description({"kind": "chat", "base": {"kind": "x"}}, meta)


def test_decode_bytes_keeps_a_character_split_across_ids_whole() -> None:
    tok = ChatTokenizer(BPETokenizer(BPE({i: bytes([i]) for i in range(256)}, [])))  # bytes
    ids = tok.encode("漢<|end|>字")
    assert ids == [*"漢".encode(), 259, *"字".encode()]
    assert tok.decode_bytes(ids) == "漢<|end|>字".encode()
    assert tok.decode(ids[:1]) == "\ufffd"  # a lone first byte of 漢: replaced, not raised


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_conversations_accepts_alpaca_records_and_chat_messages(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [
        json.dumps({"instruction": "Reverse the word.", "input": "cat", "output": "tac"}),
        "",
        json.dumps({"instruction": "Say hi.", "input": "", "output": "hi", "system": "Be kind."}),
        json.dumps({"messages": [{"role": "user", "content": "2+2?"},
                                 {"role": "assistant", "content": "4"}]}),
    ])
    assert list(read_conversations(path)) == [
        [{"role": "user", "content": "Reverse the word.\n\ncat"},
         {"role": "assistant", "content": "tac"}],
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Say hi."},
         {"role": "assistant", "content": "hi"}],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
    ]


@pytest.mark.parametrize(("line", "error"), [
    ('{"instruction": "a", "output": ', r"data\.jsonl:2: not valid JSON"),
    ('{"prompt": "a", "completion": "b"}', r"data\.jsonl:2: expected \{'messages'"),
    ('{"messages": [{"role": "user", "content": "a"}]}',
     r"data\.jsonl:2: the last message must be the assistant's"),
    ('{"messages": [{"role": "bot", "content": "a"}]}', r"data\.jsonl:2\[0\]: expected"),
    ('{"instruction": "a<|end|>", "output": "b"}',
     r"data\.jsonl:2\[0\]: the content holds the special token '<\|end\|>'"),
    ('{"messages": []}', r"data\.jsonl:2: a conversation needs at least one message"),
])
def test_a_bad_jsonl_line_is_one_error_naming_the_file_and_line(tmp_path: Path, line: str,
                                                                  error: str) -> None:
    good = json.dumps({"instruction": "a", "output": "b"})
    path = write_jsonl(tmp_path / "data.jsonl", [good, line, good])
    with pytest.raises(ValueError, match=error) as info:
        list(read_conversations(path))
    assert "\n" not in str(info.value)


def test_a_missing_jsonl_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl not found"):
        list(read_conversations(tmp_path / "nope.jsonl"))


def test_to_messages_names_where_the_record_came_from() -> None:
    with pytest.raises(ValueError, match=r"^row 7: expected"):
        to_messages(["not", "a", "record"], where="row 7")


def test_encode_conversations_cuts_to_max_len_and_rejects_an_answer_past_the_cut() -> None:
    tok = ChatTokenizer(CharTokenizer("abcxyz"))
    short = [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "xyz"}]
    long = [{"role": "user", "content": "abc" * 5}, {"role": "assistant", "content": "x"}]
    ids, learn = encode_chat(tok, short)
    assert ids == tok.encode(render(short))
    assert encode_conversations(tok, [short], max_len=6) == [(ids[:6], learn[:6])]
    assert encode_conversations(tok, [short], max_len=100) == [(ids, learn)]
    with pytest.raises(ValueError, match=r"conversation 1: its answer starts after token 9"):
        encode_conversations(tok, [short, long], max_len=10)
