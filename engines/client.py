"""Text -> embedding against a Triton server serving a roformer-trt model (HTTP or gRPC).

In:  raw Chinese/English text, the model's `vocab.txt` (RoFormerTokenizer, word segmentation by
     rjieba), a server URL `host:port` and model name.
Out: `sentence_embedding` [batch, width] float32, as the served model computes it (its width: the hidden size,
     a Dense layer's or a Matryoshka `--truncate-dim`), or any output named in `outputs`.

    from engines.client import TextEncoder
    enc = TextEncoder("demo/vocab.txt", "127.0.0.1:8000", "ckpt_onnx")
    vectors = enc.embed(["今天天气不错", "hello world"])   # one call: tokenize, send, receive

CLI: python -m engines.client --vocab demo/vocab.txt --url 127.0.0.1:8000 --model ckpt_onnx "今天天气不错"
`--wait SECONDS` first polls the server's readiness (KServe v2 health: `/v2/health/ready`, then the model's
`/v2/models/<model>/ready`; their gRPC twins ServerReady / ModelReady) until both say ready, so a client started
beside the server waits for it instead of failing with "connection refused"; past the wait it exits 3.
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
import time
import traceback
from pathlib import Path

import numpy as np

from export import cli
from export.cli import Parser
from export.errors import EXIT_OK, RoformerTrtError, UnavailableError, UsageError
from export.files import MiB, read_text
from export.numbers import NumberError, float_arg, int_arg, parse_int

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MAX_SEQUENCE_LENGTH = "max_sequence_length"  # engines.triton.config.MAX_SEQUENCE_LENGTH (no import: a client)
FALLBACK_MAX_LENGTH = 512  # a model whose config publishes no positions (another server's): BERT's usual
EMBEDDING = "sentence_embedding"
log = logging.getLogger(__name__)


class ServerError(RoformerTrtError):
    """The server refused a request; str(e) is the server's reason, one line."""

    exit_code = 1


def load_tokenizer(vocab: Path):
    """RoFormerTokenizer from a vocab.txt (one token per line, line number = id).

    transformers 5 ignores `vocab_file=` in RoFormerTokenizer's constructor (the vocab stays None and the
    first call fails inside tokenizers), so the vocab dict is read here and passed as `vocab=`."""
    vocab = Path(vocab)
    if not vocab.exists():
        raise UsageError(f"{vocab} not found; pass the vocab.txt of the checkpoint the model was built from")
    text = read_text(vocab, what="vocab", max_bytes=64 * MiB)  # a BERT vocab.txt is ~100 KB to a few MB
    try:
        import rjieba  # noqa: F401  (RoFormerTokenizer's Chinese word segmentation)
        from transformers import RoFormerTokenizer
    except ImportError as e:
        raise UnavailableError(f"{e.name} is not installed; pip install rjieba transformers") from e
    table = {}
    for i, line in enumerate(text.splitlines()):
        table.setdefault(line.strip(), i)
    for tok in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
        if tok not in table:
            raise UsageError(f"{vocab} has no {tok} line; it is not a BERT/RoFormer vocab.txt")
    return RoFormerTokenizer(vocab=table)


def encode(tokenizer, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    """int64 [batch, sequence] feeds, padded to the longest text, truncated to max_length tokens."""
    if not texts or any(not t.strip() for t in texts):
        raise UsageError("empty text: every input needs at least one non-space character")
    enc = tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=max_length,
        return_token_type_ids=True,
        return_tensors="np",
    )
    return {n: np.ascontiguousarray(enc[n], dtype=np.int64) for n in INPUTS}


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
        self._tc, self.model, self.protocol, self.timeout_s, self.url = tc, model, protocol, timeout_s, url

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

    def wait_ready(self, seconds: float, poll_s: float = 0.5) -> None:
        """Poll until the server and the model say ready (tritonclient's is_server_ready / is_model_ready); a
        refused connection or a not-ready answer is retried. UnavailableError once `seconds` have passed. Each
        poll uses a fresh client: a gRPC channel that found nothing listening backs off its reconnects for up to
        two minutes, and would notice a server that has just come up that much later."""
        deadline, why = time.monotonic() + seconds, "no answer"
        while True:
            probe = self._tc.InferenceServerClient(self.url)
            try:
                if not probe.is_server_ready():
                    why = "the server is not ready"
                elif not probe.is_model_ready(self.model):
                    why = f"model {self.model} is not ready"
                else:
                    return
            except Exception as e:  # tritonclient's and socket errors while nothing listens yet: `why` says it
                why = server_reason(e)
            finally:
                probe.close()
            if time.monotonic() + poll_s > deadline:
                raise UnavailableError(f"{self.protocol} server at {self.url} not ready after {seconds:g} s: {why}")
            time.sleep(poll_s)

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

    def __init__(
        self,
        vocab: Path,
        url: str,
        model: str,
        protocol: str = "http",
        max_length: int | None = None,
        wait_s: float = 0.0,
    ):
        if max_length is not None and max_length < 1:
            raise UsageError(f"--max-length must be >= 1, got {max_length}")
        if not wait_s >= 0:
            raise UsageError(f"--wait must be >= 0 seconds, got {wait_s}")
        self.tokenizer = load_tokenizer(vocab)
        self.client = TritonEncoderClient(url, model, protocol)
        if wait_s:
            self.client.wait_ready(wait_s)
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
        return self.client.infer(encode(self.tokenizer, texts, self.max_length), (output,))[output]

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
        '--model ckpt_onnx --wait 120 "今天天气不错" "hello world"',
    )
    p.add_argument("texts", nargs="+", help="texts to embed")
    p.add_argument("--vocab", required=True, type=Path, help="vocab.txt of the checkpoint")
    p.add_argument("--url", default="127.0.0.1:8000", help="server host:port (HTTP or gRPC port)")
    p.add_argument("--model", required=True, help="model name on the server, e.g. ckpt_onnx")
    p.add_argument("--protocol", choices=["http", "grpc"], default="http", help="transport")
    p.add_argument(
        "--max-length",
        type=int_arg(),
        default=None,
        help="truncate to this many tokens (default: the max_sequence_length the model's config publishes)",
    )
    p.add_argument(
        "--wait",
        type=float_arg(0),
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for the server and the model to be ready (exit 3 past it); 0: no wait",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), _main, argv)


def _main(args) -> int:
    enc = TextEncoder(args.vocab, args.url, args.model, args.protocol, args.max_length, args.wait)
    try:
        vec = enc.embed(args.texts)
    finally:
        enc.close()
    print(json.dumps({"embeddings": vec.tolist()}))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
