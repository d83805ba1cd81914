"""Text -> embedding against a Triton server serving a roformer-trt model (HTTP or gRPC).

In:  raw text, the model's tokenizer: its `tokenizer.json` (HF `tokenizers`; ModernBERT and most checkpoints)
     or `vocab.txt` (WordPiece, with the word segmentation of the family that ships one: export/inputs/text.py), a
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
     python -m engines.client --vocab nomic/tokenizer.json --url ... --model nomic_onnx --prompt search_query "q"
Task prefixes, as sentence-transformers' `prompt_name`: a family whose checkpoints expect one before the text
(NomicBERT: "search_query: ", ...) declares them by name; the build records them and the served model's config
publishes them (parameter `prompts`, JSON). `--prompt NAME` / `prompt_name=` prepends that prefix to every text
(before tokenizing and truncating, as sentence-transformers does); a name the model does not publish is refused
with the names it does.
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

from export.cli import entry as cli
from export.cli.entry import Parser
from export.errors import EXIT_OK, RoformerTrtError, UnavailableError, UsageError
from export.inputs.numbers import NumberError, float_arg, int_arg, parse_int
from export.inputs.text import TextTokenizer, load_text_tokenizer

MAX_SEQUENCE_LENGTH = "max_sequence_length"  # engines.triton.config.MAX_SEQUENCE_LENGTH (no import: a client)
PROMPTS = "prompts"  # engines.triton.config.PROMPTS: {prompt name: prefix} as JSON
FALLBACK_MAX_LENGTH = 512  # a model whose config publishes no positions (another server's): BERT's usual
EMBEDDING = "sentence_embedding"
log = logging.getLogger(__name__)


class ServerError(RoformerTrtError):
    """The server refused a request; str(e) is the server's reason, one line."""

    exit_code = 1


def load_tokenizer(path: Path) -> TextTokenizer:
    """The checkpoint's tokenizer.json or vocab.txt (export.inputs.text); a vocab.txt whose family segments words with a
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

    def parameters(self) -> dict[str, str]:
        """The string parameters of the model's config (max_sequence_length, prompts, ...)."""
        try:
            cfg = self._client.get_model_config(self.model)
        except Exception as e:  # tritonclient raises InferenceServerException; re-raised below with its reason
            reason = server_reason(e)
        else:
            if self.protocol == "http":
                return {k: (v or {}).get("string_value", "") for k, v in (cfg.get("parameters") or {}).items()}
            return {k: v.string_value for k, v in cfg.config.parameters.items()}
        raise ServerError(reason)

    def max_sequence_length(self) -> int | None:
        """The positions the model's config publishes (parameter max_sequence_length), else None."""
        return _positive(self.parameters().get(MAX_SEQUENCE_LENGTH))

    def prompts(self) -> dict[str, str]:
        """The text prefixes the model's config publishes by prompt name (parameter prompts), else {}."""
        return parse_prompts(self.parameters().get(PROMPTS))

    def input_names(self) -> list[str]:
        """The inputs the model's metadata declares (input_ids, attention_mask[, token_type_ids])."""
        try:
            meta = self._client.get_model_metadata(self.model)
        except Exception as e:  # tritonclient raises InferenceServerException; re-raised below with its reason
            reason = server_reason(e)
        else:
            return [i["name"] for i in meta["inputs"]] if self.protocol == "http" else [i.name for i in meta.inputs]
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


def parse_prompts(value: str | None) -> dict[str, str]:
    """{name: prefix} from the config parameter's JSON; anything else there is ignored with a warning."""
    if not value:
        return {}
    try:
        prompts = json.loads(value)
    except ValueError:
        prompts = None
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        log.warning("the model's %s parameter is not a JSON object of strings; ignoring it", PROMPTS)
        return {}
    return prompts


class TextEncoder:
    """Text in, embeddings out: tokenizer + TritonEncoderClient. max_length None: the model's positions, read
    from its config on the server (FALLBACK_MAX_LENGTH, with a warning, when it publishes none). prompt_name: the
    served model's task prefix added to every text (module docstring), unless embed() names another."""

    def __init__(
        self,
        vocab: Path,
        url: str,
        model: str,
        protocol: str = "http",
        max_length: int | None = None,
        prompt_name: str | None = None,
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
        self.inputs = self.client.input_names()  # what the model takes: no token_type_ids for some families
        self._prompts: dict[str, str] | None = None
        self.prompt_name = prompt_name
        try:
            self.prefix(prompt_name)  # an unknown name is refused now, before any text is sent
        except RoformerTrtError:
            self.client.close()
            raise
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

    def prefix(self, prompt_name: str | None) -> str:
        """The text the served model's prompt `prompt_name` prepends ("" for None); an unknown name is refused."""
        if prompt_name is None:
            return ""
        if self._prompts is None:
            self._prompts = self.client.prompts()
        if prompt_name not in self._prompts:
            known = ", ".join(sorted(self._prompts)) or "none"
            where = f"model {self.client.model}"
            raise UsageError(f"--prompt {prompt_name!r}: {where} publishes no such prompt (it has: {known})")
        return self._prompts[prompt_name]

    def embed(self, texts: list[str] | str, output: str = EMBEDDING, prompt_name: str | None = None) -> np.ndarray:
        """prompt_name: this call's prompt (sentence-transformers' encode(prompt_name=)), else the encoder's."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        head = self.prefix(prompt_name if prompt_name is not None else self.prompt_name)
        feeds = encode(self.tokenizer, [head + t for t in texts], self.max_length)
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
        '--model ckpt_onnx --wait 120 "今天天气不错" "hello world"',
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
    p.add_argument(
        "--prompt",
        default=None,
        metavar="NAME",
        help="prepend the served model's task prefix NAME to every text (sentence-transformers' prompt_name; "
        "e.g. search_query or search_document for NomicBERT); the names are those the model's config publishes",
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
    enc = TextEncoder(
        args.vocab,
        args.url,
        args.model,
        args.protocol,
        max_length=args.max_length,
        prompt_name=args.prompt,
        wait_s=args.wait,
    )
    try:
        vec = enc.embed(args.texts)
    finally:
        enc.close()
    print(json.dumps({"embeddings": vec.tolist()}))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
