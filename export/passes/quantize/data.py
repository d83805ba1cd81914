"""Calibration data: the token sequences calibration runs the graph on, from the user's file or synthetic, hashed.

In: `--calib FILE` (text, one sample a line, tokenized with the checkpoint's tokenizer.json or vocab.txt; or
`.jsonl`: one sample a line as a
JSON list of token ids or {"input_ids": [...], "token_type_ids": [...]}), `--calib-size N`, the model's
vocab size and longest sequence. Without a file: a deterministic synthetic set (seeded ids from the
vocab, lengths spread up to the longest sequence calibration uses).
Out: a CalibSet: the samples, where they came from, the sha256 of their token ids (what the report records:
the same hash means the same calibration input), and feed batches for ONNX Runtime.

Text is tokenized by export.inputs.text: a tokenizer.json by the `tokenizers` library; a vocab.txt with its
family's word segmentation when that is installed, else WordPiece alone (CJK split per character); the report
says which.

What a file can cost is bounded before any of it is parsed: the file is read up to MAX_FILE_BYTES; a text line
is cut to CHARS_PER_TOKEN characters per token kept before the tokenizer sees it (a tokenizer given a 60 MB line
allocates gigabytes for its offsets although it keeps 128 tokens), then to the token cap; a JSON line nests at
most MAX_JSON_DEPTH containers, and its integers have at most export.inputs.numbers.MAX_CHARS digits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.errors import UsageError
from export.inputs.files import MiB, parse_json, read_text
from export.inputs.text import load_text_tokenizer

SYNTHETIC_SIZE = 64  # samples when --calib is not given
MAX_CALIB_SIZE = 100_000
SYNTHETIC_LENGTHS = (1, 2, 4, 8, 16, 32, 64, 128)  # cut to the calibration length cap
CALIB_LEN_CAP = 128  # longest calibration sample (ranges are per token; longer costs time, not coverage)
SYNTHETIC_NOTE = (
    "calibrated on synthetic token ids (seeded, uniform over the vocab): accuracy on real text is "
    "unknown; pass --calib FILE with text like the deployment's"
)
BATCH_TOKENS = 1024  # tokens per calibration batch: about 60 MB of activations per batch for the demo model
MAX_FILE_BYTES = 256 * MiB
# BERT's WordPiece makes a word of more than 100 characters one [UNK], so the first N tokens of a line whose
# words are separated by single blanks lie in its first N x 101 characters: cutting at N x 128 keeps them (a
# line that is mostly blanks or control characters keeps fewer; it still calibrates on its first tokens)
CHARS_PER_TOKEN = 128
MAX_JSON_DEPTH = 2  # {"input_ids": [...]} is the deepest form a sample takes


@dataclass(frozen=True)
class CalibSet:
    samples: list[tuple[np.ndarray, np.ndarray]]  # (input_ids, token_type_ids), int64 [S] each
    source: str  # "synthetic" or the file's path
    tokenizer: str | None = None
    note: str | None = None
    types: bool = True  # the model has a token_type_ids input (False: the types are zeros and never fed)

    @property
    def sha256(self) -> str:
        """sha256 of the samples' token ids and types (int64 little-endian, each prefixed by its length)."""
        h = hashlib.sha256()
        for ids, types in self.samples:
            h.update(np.int64(len(ids)).tobytes())
            h.update(ids.astype("<i8").tobytes())
            h.update(types.astype("<i8").tobytes())
        return h.hexdigest()

    def to_report(self) -> dict:
        lengths = [len(i) for i, _ in self.samples]
        out = {
            "source": self.source,
            "samples": len(self.samples),
            "tokens": int(sum(lengths)),
            "min_len": min(lengths),
            "max_len": max(lengths),
            "sha256": self.sha256,
        }
        return out | {k: v for k, v in (("tokenizer", self.tokenizer), ("note", self.note)) if v}

    def batches(self, choices: int | None = None, batch_tokens: int = BATCH_TOKENS) -> Callable[[], Iterator[dict]]:
        """A function returning the feed batches: samples sorted by length (stable), padded to the batch's longest
        (mask 0); [B, choices, S] for a multiple-choice head (each sample repeated)."""
        order = sorted(range(len(self.samples)), key=lambda i: len(self.samples[i][0]))

        def gen():
            i = 0
            while i < len(order):
                n = 1  # ascending lengths: the group's last sample is its longest, the padded width
                while i + n < len(order) and (n + 1) * len(self.samples[order[i + n]][0]) <= batch_tokens:
                    n += 1
                yield _feed([self.samples[j] for j in order[i : i + n]], choices, self.types)
                i += n

        return gen


def _feed(group: list[tuple[np.ndarray, np.ndarray]], choices: int | None, types_input: bool) -> dict[str, np.ndarray]:
    s = max(len(ids) for ids, _ in group)
    ids = np.zeros((len(group), s), np.int64)
    types = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for r, (i, t) in enumerate(group):
        ids[r, : len(i)], types[r, : len(t)], mask[r, : len(i)] = i, t, 1
    feed = {"input_ids": ids, "attention_mask": mask} | ({"token_type_ids": types} if types_input else {})
    if choices:
        feed = {k: np.repeat(v[:, None, :], choices, axis=1) for k, v in feed.items()}
    return feed


def synthetic_set(vocab_size: int, type_vocab_size: int | None, max_len: int, size: int = SYNTHETIC_SIZE) -> CalibSet:
    """type_vocab_size None: a model without token_type_ids (every type 0, none fed)."""
    rng = np.random.default_rng(20240521)
    lengths = [n for n in SYNTHETIC_LENGTHS if n <= min(max_len, CALIB_LEN_CAP)] or [min(max_len, CALIB_LEN_CAP)]
    samples = []
    for k in range(size):
        n = lengths[k % len(lengths)]
        ids = rng.integers(0, vocab_size, size=n, dtype=np.int64)
        types = np.zeros(n, np.int64)
        if (type_vocab_size or 0) > 1 and k % 2:
            types[n // 2 :] = 1  # a second segment in every other sample
        samples.append((ids, types))
    return CalibSet(samples, "synthetic", note=SYNTHETIC_NOTE, types=type_vocab_size is not None)


def is_json_lines(path: Path) -> bool:
    """Token ids as JSON lines: a .jsonl file, whatever the case of its suffix."""
    return Path(path).suffix.lower() == ".jsonl"


def check_size(size: int | None) -> int | None:
    if size is not None and not 1 <= size <= MAX_CALIB_SIZE:
        raise UsageError(f"--calib-size must be from 1 to {MAX_CALIB_SIZE}, got {size}")
    return size


def file_set(
    path: Path, vocab: Path | None, vocab_size: int, type_vocab_size: int | None, max_len: int, size: int | None
) -> CalibSet:
    """The user's calibration file; UsageError (exit 2) naming the file and line for anything unusable."""
    path = Path(path)
    text = read_text(path, what="calibration file", max_bytes=MAX_FILE_BYTES)
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise UsageError(f"calibration file {path} has no samples; put one sample per line")
    lines = lines[:size] if size else lines
    cap = min(max_len, CALIB_LEN_CAP)
    if is_json_lines(path):
        samples = [_json_sample(path, n, line, vocab_size, type_vocab_size, cap) for n, line in lines]
        return CalibSet(samples, str(path), tokenizer="token ids (JSON lines)", types=type_vocab_size is not None)
    if vocab is None or not Path(vocab).is_file():
        where = f"{vocab} does not exist" if vocab else "there is no tokenizer.json or vocab.txt beside the checkpoint"
        raise UsageError(
            f"--calib {path} is text and {where}; pass --calib-vocab PATH, or give token ids as JSON "
            "lines in a .jsonl file"
        )
    tok = load_text_tokenizer(Path(vocab))
    samples = []
    for n, line in lines:
        ids, types = tok.encode_one(line[: cap * CHARS_PER_TOKEN], cap)
        if ids.size and int(ids.max()) >= vocab_size:
            raise UsageError(
                f"{path}:{n}: token id {int(ids.max())} from {vocab} is outside the model's vocab of "
                f"{vocab_size}; pass the tokenizer of this checkpoint with --calib-vocab"
            )
        samples.append((ids, types if type_vocab_size is not None else np.zeros_like(ids)))
    return CalibSet(samples, str(path), tokenizer=tok.describe(), types=type_vocab_size is not None)


def _json_sample(
    path: Path, n: int, line: str, vocab_size: int, type_vocab_size: int | None, cap: int
) -> tuple[np.ndarray, np.ndarray]:
    where = f"{path}:{n}"
    obj = parse_json(line, where=where, max_depth=MAX_JSON_DEPTH, fix="each line must be a list of token ids")
    ids, types = (obj.get("input_ids"), obj.get("token_type_ids")) if isinstance(obj, dict) else (obj, None)
    ids = _int_list(ids, where, "input_ids", vocab_size)
    if types is None:
        types = [0] * len(ids)
    elif type_vocab_size is None:
        raise UsageError(f"{where}: token_type_ids given, but this model has no token_type_ids input; drop them")
    else:
        types = _int_list(types, where, "token_type_ids", type_vocab_size)
    if len(types) != len(ids):
        raise UsageError(f"{where}: token_type_ids has {len(types)} entries for {len(ids)} input_ids")
    return np.asarray(ids[:cap], np.int64), np.asarray(types[:cap], np.int64)


def _int_list(v, where: str, what: str, limit: int) -> list[int]:
    if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise UsageError(f"{where}: {what} must be a non-empty list of integers")
    bad = next((x for x in v if not 0 <= x < limit), None)
    if bad is not None:
        raise UsageError(f"{where}: {what} value {bad} is outside [0, {limit})")
    return v
