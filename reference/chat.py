"""The chat format: turns of a conversation as one token sequence, the same in training and at
inference.

A conversation is a list of messages ``{"role": "system" | "user" | "assistant", "content":
text}``. It becomes text with one special token before each turn and one after it::

    <|system|>You are terse.<|end|><|user|>Reverse: cat<|end|><|assistant|>tac<|end|>

and at inference the prompt ends with ``<|assistant|>``, so the model writes the assistant's turn
and stops at ``<|end|>``.

The four special tokens are added to any tokenizer (character, BPE, GPT-2's) by
:class:`ChatTokenizer` *after* its last id, so every existing id keeps its meaning: a model
fine-tuned for chat starts from its base model, whose embedding grows by four rows. A special
token is always one id: the text is cut at the special strings before the base tokenizer sees
it, so no merge or character split ever crosses one.

Example::

    >>> from reference.tokenizers import CharTokenizer
    >>> tok = ChatTokenizer(CharTokenizer("abct"))
    >>> text = render([{"role": "user", "content": "cat"}], add_generation_prompt=True)
    >>> text
    '<|user|>cat<|end|><|assistant|>'
    >>> tok.encode(text)
    [5, 2, 0, 3, 7, 6]
    >>> tok.decode(tok.encode(text)) == text
    True
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .tokenizers import Tokenizer

__all__ = ["END", "ROLES", "SPECIALS", "ChatTokenizer", "encode_chat", "render", "validate"]

ROLES = ("system", "user", "assistant")
END = "<|end|>"
SPECIALS = ("<|system|>", "<|user|>", "<|assistant|>", END)  # ids base + 0..3, in this order
Message = Mapping[str, str]


def validate(messages: Sequence[Message], *, where: str = "messages") -> None:
    """Raise ValueError naming the message unless each is ``{"role": one of ROLES, "content":
    str}`` and no content holds a special token string."""
    if not messages:
        raise ValueError(f"{where}: a conversation needs at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES or not isinstance(
                m.get("content"), str):
            raise ValueError(f"{where}[{i}]: expected {{'role': one of {list(ROLES)}, "
                             f"'content': text}}, got {m!r}")
        for special in SPECIALS:
            if special in m["content"]:
                raise ValueError(f"{where}[{i}]: the content holds the special token "
                                 f"{special!r}, which only the template may write")


def render(messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
    """The conversation as text in the chat format; with ``add_generation_prompt`` it ends
    with ``<|assistant|>`` (the model's turn)."""
    validate(messages)
    text = "".join(f"<|{m['role']}|>{m['content']}{END}" for m in messages)
    return text + "<|assistant|>" if add_generation_prompt else text


class ChatTokenizer:
    """A tokenizer plus the chat format's four special tokens, at ids ``base.vocab_size + i``.

    Ordinary text encodes exactly as the base tokenizer encodes it; the special strings are
    cut out first and become their ids.
    """

    kind = "chat"

    def __init__(self, base: Tokenizer) -> None:
        if isinstance(base, ChatTokenizer):
            raise ValueError("the tokenizer already has the chat tokens")
        self.base = base
        self.special_ids = {s: base.vocab_size + i for i, s in enumerate(SPECIALS)}
        self._by_id = {i: s for s, i in self.special_ids.items()}
        self._split = re.compile("(" + "|".join(map(re.escape, SPECIALS)) + ")")

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size + len(SPECIALS)

    @property
    def eot_id(self) -> int:
        """``<|end|>``: generation of an assistant turn stops there."""
        return self.special_ids[END]

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``: each special string is its one id; the text between them is
        encoded by the base tokenizer, piece by piece."""
        ids: list[int] = []
        for n, piece in enumerate(self._split.split(text)):
            if n % 2:  # split() with one group: odd pieces are the special tokens
                ids.append(self.special_ids[piece])
            elif piece:
                ids += self.base.encode(piece)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids`` (a list, an array or a tensor); bytes that do not form a whole
        UTF-8 character become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        out, run = bytearray(), list[int]()
        for i in _ints(ids):
            if i in self._by_id:
                out += self.base.decode_bytes(run) + self._by_id[i].encode()
                run = []
            else:
                run.append(i)
        return bytes(out + self.base.decode_bytes(run))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "base": self.base.to_dict(), "specials": list(SPECIALS)}


def _ints(ids: Iterable[int]) -> list[int]:
    tolist = getattr(ids, "tolist", None)
    return list(tolist()) if tolist is not None else list(ids)


def encode_chat(tokenizer: ChatTokenizer, messages: Sequence[Message]) -> tuple[list[int],
                                                                                 list[bool]]:
    """The ids of a whole conversation and, for each id, whether a model is trained to predict
    it: the content and the closing ``<|end|>`` of every assistant turn, nothing else (no loss
    on the prompt: the system and user turns and the role tokens).

    Example::

        >>> from reference.tokenizers import CharTokenizer
        >>> ids, learn = encode_chat(ChatTokenizer(CharTokenizer("abct")),
        ...                          [{"role": "user", "content": "cat"},
        ...                           {"role": "assistant", "content": "tac"}])
        >>> ids
        [5, 2, 0, 3, 7, 6, 3, 0, 2, 7]
        >>> learn  # the assistant's "tac" and its <|end|>
        [False, False, False, False, False, False, True, True, True, True]
    """
    validate(messages)
    ids: list[int] = []
    learn: list[bool] = []
    for m in messages:
        head = [tokenizer.special_ids[f"<|{m['role']}|>"]]
        body = [*tokenizer.base.encode(m["content"]), tokenizer.eot_id]
        ids += head + body
        learn += [False] * len(head) + [m["role"] == "assistant"] * len(body)
    return ids, learn
