"""Text -> embedding against a Triton server serving a roformer-trt model (HTTP or gRPC).

In:  raw text, the model's tokenizer: its `tokenizer.json` (HF `tokenizers`; ModernBERT and most checkpoints)
     or `vocab.txt` (WordPiece, with the word segmentation of the family that ships one: export/text.py), a
     server URL `host:port` and model name.
Out: `sentence_embedding` [batch, width] float32, as the served model computes it (its width: the hidden size,
     a Dense layer's or a Matryoshka `--truncate-dim`), or any output named in `outputs`. Only the inputs the
     model declares (its metadata on the server) are sent: a model without token_type_ids gets input_ids and
     attention_mask.

    from engines.client import TextEncoder
    enc = TextEncoder("demo/vocab.txt", "127.0.0.1:8000", "ckpt_onnx")
    vectors = enc.embed(["今天天气不错", "hello world"])   # one call: tokenize, send, receive

CLI: python -m engines.client --vocab demo/vocab.txt --url 127.0.0.1:8000 --model ckpt_onnx "今天天气不错"
     python -m engines.client --vocab demo-mb/tokenizer.json --url 127.0.0.1:8000 --model demo-mb_onnx "hello"
Texts are truncated to the model's positions: the `max_sequence_length` parameter of its config.pbtxt
(engines.serving and engines.triton publish it), or `--max-length` / `max_length=`, which override it.
Empty text is refused here. A request the server refuses comes back as ServerError whose text is only
the server's one-line reason, with any file path cut out.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from pathlib import Path

import numpy as np

from export import cli
from export.cli import Parser
from export.errors import EXIT_OK, RoformerTrtError, UnavailableError, UsageError
from export.numbers import NumberError, int_arg, parse_int
from export.text import TextTokenizer, load_text_tokenizer

MAX_SEQUENCE_LENGTH = "max_sequence_length"  # engines.triton.config.MAX_SEQUENCE_LENGTH (no import: a client)
FALLBACK_MAX_LENGTH = 512  # a model whose config publishes no positions (another server's): BERT's usual
EMBEDDING = "sentence_embedding"
log = logging.getLogger(__name__)


class ServerError(RoformerTrtError):
    """The server refused a request; str(e) is the server's reason, one line."""

    exit_code = 1


def load_tokenizer(path: Path) -> TextTokenizer:
    """The checkpoint's tokenizer.json or vocab.txt (export.text); a vocab.txt whose family segments words with a
    library that is not installed (a Chinese word segmenter) is UnavailableError here, not a silent per-character
    split."""
    return load_text_tokenizer(path, strict=True)


def encode(tokenizer: TextTokenizer, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    """int64 [batch, sequence] feeds (input_ids, attention_mask, token_type_ids), padded to the longest text,
    truncated to max_length tokens."""
    return tokenizer.encode(list(texts), max_length)


_PATH = re.compile(r"(?:/[\w.@+-]+){2,}")


def server_reason(err: Exception) -> str:
    """The one line that matters from a Triton error: its message without the status prefix that
    str(InferenceServerException) adds, first line only, any file path cut out."""
    message = getattr(err, "message", None)
    text = message() if callable(message) else str(err)
    text = text or str(err)
    first = text.splitlines()[0] if text else type(err).__name__
    return _PATH.sub("<path>", first)


class TritonEncoderClient:
    """Sends int64 feeds to `model` over HTTP (`protocol="http"`) or gRPC; one connection per instance."""

    def __init__(self, url: str, model: str, protocol: str = "http", timeout_s: float = 30.0):
        if protocol not in ("http", "grpc"):
            raise UsageError(f"protocol must be http or grpc, got {protocol!r}")
        try:
            if protocol == "http":
                import tritonclient.http as tc

                self._client = tc.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
            else:
                import tritonclient.grpc as tc

                self._client = tc.InferenceServerClient(url)
        except ImportError as e:
            raise UnavailableError("tritonclient is not installed; pip install 'tritonclient[http,grpc]'") from e
        self._tc, self.model, self.protocol, self.timeout_s = tc, model, protocol, timeout_s

    def infer(self, feeds: dict[str, np.ndarray], outputs: tuple[str, ...] = (EMBEDDING,)) -> dict[str, np.ndarray]:
        tc = self._tc
        ins = []
        for name, arr in feeds.items():
            i = tc.InferInput(name, list(arr.shape), _triton_dtype(arr.dtype))
            i.set_data_from_numpy(arr)
            ins.append(i)
        req = [tc.InferRequestedOutput(n) for n in outputs]
        kw = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        try:
            res = self._client.infer(self.model, ins, outputs=req, **kw)
        except Exception as e:  # tritonclient raises InferenceServerException; re-raised below with its reason
            reason = server_reason(e)
            # tritonclient's _raise_if_error frame holds the exception whose traceback holds that frame: a
            # cycle that keeps this request's serialized inputs alive until the next full GC. Break it.
            traceback.clear_frames(e.__traceback__)
        else:
            return {n: res.as_numpy(n) for n in outputs}
        raise ServerError(reason)

    def max_sequence_length(self) -> int | None:
        """The positions the model's config publishes (parameter max_sequence_length), else None."""
        try:
            cfg = self._client.get_model_config(self.model)
        except Exception as e:  # tritonclient raises InferenceServerException; re-raised below with its reason
            reason = server_reason(e)
        else:
            if self.protocol == "http":
                value = ((cfg.get("parameters") or {}).get(MAX_SEQUENCE_LENGTH) or {}).get("string_value")
            else:
                params = cfg.config.parameters
                value = params[MAX_SEQUENCE_LENGTH].string_value if MAX_SEQUENCE_LENGTH in params else None
            return _positive(value)
        raise ServerError(reason)

    def input_names(self) -> list[str]:
        """The inputs the model's metadata declares (input_ids, attention_mask[, token_type_ids])."""
        try:
            meta = self._client.get_model_metadata(self.model)
        except Exception as e:  # tritonclient raises InferenceServerException; re-raised below with its reason
            reason = server_reason(e)
        else:
            return [i["name"] for i in meta["inputs"]] if self.protocol == "http" else [i.name for i in meta.inputs]
        raise ServerError(reason)

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _triton_dtype(dt) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(np.dtype(dt))


class TextEncoder:
    """Text in, embeddings out: tokenizer + TritonEncoderClient. max_length None: the model's positions, read
    from its config on the server (FALLBACK_MAX_LENGTH, with a warning, when it publishes none)."""

    def __init__(self, vocab: Path, url: str, model: str, protocol: str = "http", max_length: int | None = None):
        if max_length is not None and max_length < 1:
            raise UsageError(f"--max-length must be >= 1, got {max_length}")
        self.tokenizer = load_tokenizer(vocab)
        self.client = TritonEncoderClient(url, model, protocol)
        self.inputs = self.client.input_names()  # what the model takes: no token_type_ids for some families
        if max_length is None:
            max_length = self.client.max_sequence_length()
            if max_length is None:
                log.warning(
                    "%s publishes no %s; truncating to %d tokens (pass --max-length)",
                    model,
                    MAX_SEQUENCE_LENGTH,
                    FALLBACK_MAX_LENGTH,
                )
                max_length = FALLBACK_MAX_LENGTH
        self.max_length = max_length

    def embed(self, texts: list[str] | str, output: str = EMBEDDING) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        feeds = encode(self.tokenizer, texts, self.max_length)
        return self.client.infer({n: feeds[n] for n in self.inputs}, (output,))[output]

    def close(self) -> None:
        self.client.close()


def _positive(value: str | None) -> int | None:
    """A positive integer the server published as text (ASCII digits only), else None."""
    try:
        return parse_int(value, lo=1) if value else None
    except NumberError:
        return None


def build_parser() -> Parser:
    p = Parser(
        prog="python -m engines.client",
        description="Embed text with a roformer-trt model served by Triton.",
        epilog="example: python -m engines.client --vocab demo/vocab.txt --url 127.0.0.1:8000 "
        '--model ckpt_onnx "今天天气不错" "hello world"',
    )
    p.add_argument("texts", nargs="+", help="texts to embed")
    p.add_argument(
        "--vocab",
        "--tokenizer",
        dest="vocab",
        required=True,
        type=Path,
        help="the checkpoint's tokenizer.json (HF tokenizers) or vocab.txt",
    )
    p.add_argument("--url", default="127.0.0.1:8000", help="server host:port (HTTP or gRPC port)")
    p.add_argument("--model", required=True, help="model name on the server, e.g. ckpt_onnx")
    p.add_argument("--protocol", choices=["http", "grpc"], default="http", help="transport")
    p.add_argument(
        "--max-length",
        type=int_arg(),
        default=None,
        help="truncate to this many tokens (default: the max_sequence_length the model's config publishes)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), _main, argv)


def _main(args) -> int:
    enc = TextEncoder(args.vocab, args.url, args.model, args.protocol, args.max_length)
    try:
        vec = enc.embed(args.texts)
    finally:
        enc.close()
    print(json.dumps({"embeddings": vec.tolist()}))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
