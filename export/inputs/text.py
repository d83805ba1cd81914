"""Text -> token ids with the tokenizer a checkpoint ships: `tokenizer.json` (HF `tokenizers`), or `vocab.txt`.

In:  the file's path. Out: a `TextTokenizer`: `encode(texts, max_length)` -> int64 [batch, sequence] arrays
`input_ids`, `attention_mask`, `token_type_ids` (padded to the longest text, truncated to max_length; a model
without token_type_ids simply ignores that array), and `describe()` for the report.

- tokenizer.json is read by the `tokenizers` library itself (the format every HF checkpoint ships since
  transformers 4; ModernBERT's BPE, the demo's WordPiece): its own normalizer, pre-tokenizer, special tokens
  and post-processor ([CLS] ... [SEP]); padding with its declared pad token, else "[PAD]", else id 0.
- vocab.txt (one token per line, line number = id: BERT-style WordPiece) is tokenized the way the family that
  ships one says (`Family.vocab_tokenizer`: RoFormer segments Chinese words with rjieba), else by
  BertTokenizer on the same table; `strict` makes a missing word segmenter an UnavailableError instead.
Every refusal is one UsageError line (exit 2): a missing or unreadable file, a vocab.txt without [PAD], [UNK],
[CLS] and [SEP], empty text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.errors import UnavailableError, UsageError
from export.families.registry import vocab_tokenizer
from export.inputs.files import MiB, read_text

if TYPE_CHECKING:  # both imported where a tokenizer is made
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase

VOCAB_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
NAMES = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class TextTokenizer:
    backend: Tokenizer | PreTrainedTokenizerBase
    description: str

    def describe(self) -> str:
        return self.description

    def encode(self, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
        if not texts or any(not t.strip() for t in texts):
            raise UsageError("empty text: every input needs at least one non-space character")
        from tokenizers import Tokenizer

        if isinstance(self.backend, Tokenizer):
            self.backend.enable_truncation(max_length)
            encs = self.backend.encode_batch(list(texts))
            out = {
                "input_ids": [e.ids for e in encs],
                "attention_mask": [e.attention_mask for e in encs],
                "token_type_ids": [e.type_ids for e in encs],
            }
        else:
            out = self.backend(
                list(texts), padding=True, truncation=True, max_length=max_length, return_token_type_ids=True
            )
        return {n: np.ascontiguousarray(np.asarray(out[n]), dtype=np.int64) for n in NAMES}

    def encode_one(self, text: str, max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, token_type_ids) of one text, unpadded."""
        enc = self.encode([text], max_length)
        n = int(enc["attention_mask"][0].sum())
        return enc["input_ids"][0, :n], enc["token_type_ids"][0, :n]


def load_text_tokenizer(path: str | Path, strict: bool = False) -> TextTokenizer:
    """The tokenizer in `path`: a tokenizer.json (any *.json) or a vocab.txt."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} not found; pass the tokenizer.json or vocab.txt of the checkpoint")
    if path.suffix.lower() == ".json":
        return _from_json(path)
    return _from_vocab(path, strict)


def _from_json(path: Path) -> TextTokenizer:
    from tokenizers import Tokenizer

    text = read_text(path, what="tokenizer", max_bytes=64 * MiB)
    try:
        tok = Tokenizer.from_str(text)
    except Exception as e:  # the library's parse errors: the file's problem
        raise UsageError(f"{path} is not a tokenizers tokenizer.json ({str(e).splitlines()[0][:120]})") from None
    pad = tok.padding or {}
    pad_id = pad.get("pad_id")
    if pad_id is None:
        pad_id = tok.token_to_id("[PAD]") or 0
    tok.enable_padding(pad_id=pad_id, pad_token=tok.id_to_token(pad_id) or "[PAD]")
    return TextTokenizer(tok, f"tokenizers ({path.name}, {type(tok.model).__name__})")


def _from_vocab(path: Path, strict: bool) -> TextTokenizer:
    text = read_text(path, what="vocab", max_bytes=64 * MiB)  # a BERT vocab.txt is ~100 KB to a few MB
    table: dict[str, int] = {}
    for i, line in enumerate(text.splitlines()):
        table.setdefault(line.strip(), i)
    for tok in VOCAB_SPECIAL:
        if tok not in table:
            raise UsageError(f"{path} has no {tok} line; it is not a BERT-style vocab.txt")
    try:
        backend, how = vocab_tokenizer(table)
        return TextTokenizer(backend, f"{how} ({path.name})")
    except ImportError as e:
        if strict:
            raise UnavailableError(f"{e.name} is not installed; pip install {e.name}") from e
        from transformers import BertTokenizer

        return TextTokenizer(
            BertTokenizer(vocab=table),
            f"BertTokenizer ({path.name}; {e.name} not installed: CJK split per character, not segmented by words)",
        )
