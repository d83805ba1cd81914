"""Live Triton server on this machine (tritonserver from nvidia-pytriton, our Python backend and fronts, CPU):
concurrent HTTP + gRPC clients vs PyTorch, bad and hostile requests, memory after oversize requests,
text -> embedding through engines.client, and `python -m engines.serving` exiting 5 when tritonserver or
its backend stub dies. Servers listen on 127.0.0.1 only, on free ports, and are stopped by the tests; the
shared one is conftest.py's session fixture. Skipped, with the reason, where tritonserver cannot run
(CI's serving venv sets ROFORMER_TRT_REQUIRE_SERVING=1: live_server.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.engines.serving.live_server import LIVE_TIMEOUT_S, SKIP, live_marks

pytestmark = live_marks()
if SKIP is None:
    from engines.client import ServerError, TextEncoder, TritonEncoderClient, encode, load_tokenizer

ATOL = 1e-4  # fp32 ORT vs PyTorch: optimum's BertOnnxConfig.ATOL_FOR_VALIDATION
N_REQUESTS = 24  # per protocol; bounded so the module stays well under a minute
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "我",
    "们",
    "爱",
    "北",
    "京",
    "天",
    "安",
    "门",
    "今",
    "气",
    "不",
    "错",
    "hello",
    "world",
    "##s",
    ",",
    ".",
]


def torch_embedding(model, feeds):
    import torch

    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        h = model(**t).last_hidden_state.double()
    m = t["attention_mask"].double()[..., None]
    return h.numpy(), ((h * m).sum(1) / m.sum(1).clamp(min=1e-9)).numpy()


def random_feeds(seed):
    rng = np.random.default_rng(seed)
    b, s = int(rng.integers(1, 5)), int(rng.integers(1, 65))
    ids = rng.integers(5, 99, (b, s)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[0, max(1, s // 2) :] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_concurrent_requests_match_torch(server, protocol):
    urls, model = server

    def one(seed):
        feeds = random_feeds(seed)
        with TritonEncoderClient(urls[protocol], urls["model"], protocol) as c:
            got = c.infer(feeds, ("last_hidden_state", "sentence_embedding"))
        ref_h, ref_e = torch_embedding(model, feeds)
        return (
            float(np.abs(got["sentence_embedding"] - ref_e).max()),
            float(np.abs(got["last_hidden_state"] - ref_h).max()),
        )

    with ThreadPoolExecutor(8) as pool:
        errs = list(pool.map(one, range(N_REQUESTS)))
    worst = max(max(e) for e in errs)
    print(f"{protocol}: {len(errs)} requests, max|server - torch| {worst:.3g}")
    assert len(errs) == N_REQUESTS and worst <= ATOL


def _raw(urls, protocol, feeds, dtype=None):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    tc = th if protocol == "http" else tg
    client = tc.InferenceServerClient(urls[protocol])
    try:
        ins = []
        for n, a in feeds.items():
            a = a.astype(dtype) if dtype else a
            i = tc.InferInput(n, list(a.shape), "INT32" if a.dtype == np.int32 else "INT64")
            i.set_data_from_numpy(a)
            ins.append(i)
        return client.infer(urls["model"], ins)
    finally:
        client.close()


CLIENT_ERROR = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_fail_clearly_and_server_keeps_serving(server, protocol):
    from tritonclient.utils import InferenceServerException

    from engines.client import server_reason

    urls, model = server
    ok = random_feeds(1)
    ids = np.full((1, 65), 7, np.int64)  # one position past max_position_embeddings = 64
    too_long = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}

    def bad(name, value):
        feeds = {k: v.copy() for k, v in ok.items()}
        feeds[name][0, 0] = value
        return feeds

    cases = [
        (ok, np.int32, "data-type is 'INT32', but model"),
        (too_long, None, "sequence length 65 exceeds the model's 64 positions"),
        (bad("input_ids", 500), None, "input_ids outside [0, 99)"),
        (bad("token_type_ids", 2), None, "token_type_ids outside [0, 2)"),  # type_vocab_size 2 (HF default)
        (bad("token_type_ids", -1), None, "token_type_ids outside [0, 2)"),
        (bad("attention_mask", 2), None, "attention_mask holds values other than 0 and 1"),
    ]
    for feeds, dtype, expected in cases:
        with pytest.raises(InferenceServerException) as e:
            _raw(urls, protocol, feeds, dtype)
        text = str(e.value)
        assert expected in server_reason(e.value), text[:500]
        # a client error: its status, one line, no traceback, no server file path
        assert e.value.status() == CLIENT_ERROR[protocol], (e.value.status(), text[:300])
        assert "\n" not in text and "Traceback" not in text and ".py" not in text, text[:500]
    empty = {k: np.zeros((1, 0), np.int64) for k in ok}
    with pytest.raises(InferenceServerException) as e:
        _raw(urls, protocol, empty)
    assert e.value.status() == CLIENT_ERROR[protocol] and "empty sequence" in server_reason(e.value), str(e.value)
    with TritonEncoderClient(urls[protocol], urls["model"], protocol) as c:
        with pytest.raises(ServerError) as e:
            c.infer(too_long)
        assert str(e.value) == "sequence length 65 exceeds the model's 64 positions; truncate to 64 tokens"
        got = c.infer(ok)["sentence_embedding"]  # still serving
    assert float(np.abs(got - torch_embedding(model, ok)[1]).max()) <= ATOL


def serving_rss_mib() -> dict[str, float]:
    """{"pid:name": RSS MiB} of the serving processes: this one (the fronts run here) and every
    descendant (tritonserver, the Python backend stub)."""

    def tree(pid):
        kids = []
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                kids += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
            except OSError:  # the thread ended meanwhile
                pass
        return [pid] + [d for k in kids for d in tree(k)]

    out = {}
    for pid in tree(os.getpid()):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:  # exited meanwhile
            continue
        out[f"{pid}:{name}"] = (
            next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:")), 0) / 1024
        )
    return out


OVERSIZE_CLIENT = """
import sys, numpy as np, tritonclient.http as th
url, model, n, s = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = th.InferenceServerClient(url, network_timeout=600)
ids = np.full((1, s), 7, np.int64)
for _ in range(n):
    ins = []
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        i = th.InferInput(name, [1, s], "INT64")
        i.set_data_from_numpy(ids)
        ins.append(i)
    try:
        c.infer(model, ins)
        sys.exit("an oversize request was answered")
    except th.InferenceServerException as e:  # refused by the HTTP front from its Content-Length
        assert "exceeds the model's limit" in str(e) and e.status() == "413", str(e)[:300]
"""
OVERSIZE_TOKENS = 2_000_000  # the finding: 48 MB of int64 inputs per request
N_OVERSIZE = 8


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="measures RSS through /proc (Linux)")
def test_memory_returns_after_oversize_requests(server):
    """Refused oversize requests must not pile up in the server. The HTTP front refuses them from their
    Content-Length and drops the body in 1 MiB chunks, so nothing of them reaches tritonserver; after
    N more than the first two, the serving processes' RSS (this one, which runs the fronts, tritonserver
    and its backend stub) must be within 10 % of the level after two. With PyTriton 0.7 each one added
    ~117 MiB for good. The client runs in a process of its own, so its memory is not counted."""
    urls, _ = server

    def send(n):
        subprocess.run(
            [sys.executable, "-c", OVERSIZE_CLIENT, urls["http"], urls["model"], str(n), str(OVERSIZE_TOKENS)],
            check=True,
            timeout=LIVE_TIMEOUT_S,
        )

    send(2)
    before = serving_rss_mib()
    send(N_OVERSIZE)
    after = serving_rss_mib()
    total_before, total_after = sum(before.values()), sum(after.values())
    print(
        f"serving RSS after 2 oversize requests {total_before:.0f} MiB, after {N_OVERSIZE} more {total_after:.0f} MiB"
    )
    growth = {k: round(after.get(k, 0) - v) for k, v in before.items()}
    assert total_after <= 1.10 * total_before, (round(total_before), round(total_after), growth)


def test_text_to_embedding(server, tmp_path):
    urls, model = server
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    texts = ["我们爱北京天安门", "hello worlds, 今天天气不错"]
    feeds = encode(load_tokenizer(vocab), texts, max_length=64)
    # [CLS] 我 们 爱 北 京 天 安 门 [SEP], padded to the longer text
    assert feeds["input_ids"][0].tolist() == [2, 5, 6, 7, 8, 9, 10, 11, 12, 3, 0, 0]
    assert feeds["attention_mask"][0].tolist() == [1] * 10 + [0, 0]
    enc = TextEncoder(vocab, urls["grpc"], urls["model"], "grpc", max_length=64)
    try:
        got = enc.embed(texts)
        with pytest.raises(Exception, match="empty text"):
            enc.embed(["  "])
    finally:
        enc.close()
    ref = torch_embedding(model, feeds)[1]
    assert got.shape == (2, model.config.hidden_size)
    assert float(np.abs(got - ref).max()) <= ATOL


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_truncates_to_the_positions_the_model_publishes(server, tmp_path, protocol):
    """No --max-length: the client reads max_sequence_length (64) from the model's config and truncates a
    long text to it instead of having it refused; an explicit max_length still wins."""
    urls, model = server
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    long_text = "我们爱北京天安门" * 20  # 160 characters, one token each
    enc = TextEncoder(vocab, urls[protocol], urls["model"], protocol)
    try:
        assert enc.max_length == 64
        got = enc.embed([long_text])
    finally:
        enc.close()
    feeds = encode(load_tokenizer(vocab), [long_text], max_length=64)
    assert feeds["input_ids"].shape == (1, 64)
    assert float(np.abs(got - torch_embedding(model, feeds)[1]).max()) <= ATOL
    assert TextEncoder(vocab, urls[protocol], urls["model"], protocol, max_length=9).max_length == 9


HOSTILE_JSON = [  # (body, what the one-line answer says); every one got HTTP 500 or killed tritonserver 2.51
    (
        b'{"inputs":[{"name":"input_ids","shape":[1,1000000000000],"datatype":"INT64","data":[1]}]}',
        "more than the model's limit",
    ),
    (b'{"inputs":[{"name":"input_ids","shape":[1,3],"datatype":"INT64","data":[1]}]}', "but 'data' holds 1"),
    (b'{"inputs":[{"name":"input_ids","shape":[2,2],"datatype":"INT64","data":[[1,2],[3]]}]}', "ragged"),
    (b'{"inputs":[{"name":"input_ids","shape":[1,-3],"datatype":"INT64","data":[1]}]}', "negative dimension"),
    (b'{"inputs":[{"name"', "not valid JSON"),
]


def _still_serves(urls, model, protocol="http"):
    ok = random_feeds(3)
    with TritonEncoderClient(urls[protocol], urls["model"], protocol) as c:
        got = c.infer(ok)["sentence_embedding"]
    assert float(np.abs(got - torch_embedding(model, ok)[1]).max()) <= ATOL


def test_hostile_http_requests_get_400_and_the_server_keeps_serving(server):
    import http.client
    import json

    urls, model = server
    host, port = urls["http"].rsplit(":", 1)
    for body, expected in HOSTILE_JSON:
        conn = http.client.HTTPConnection(host, int(port), timeout=LIVE_TIMEOUT_S)
        conn.request(
            "POST", f"/v2/models/{urls['model']}/infer", body=body, headers={"Content-Type": "application/json"}
        )
        r = conn.getresponse()
        error = json.loads(r.read())["error"]
        conn.close()
        assert r.status == 400 and expected in error and "\n" not in error, (r.status, error)
        _still_serves(urls, model)


def test_hostile_grpc_requests_get_invalid_argument_and_the_server_keeps_serving(server):
    """An INT64 shape whose byte size wraps in 64 bits to the data's size killed the backend stub of
    tritonserver 2.51; the declared [1, 10**12] with one element is refused as over the limit too."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    urls, model = server
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(urls["grpc"]))
    for shape, n, expected in (
        ([1, 2**61 + 1], 1, "more than the model's limit"),
        ([1, 10**12], 1, "more than the model's limit"),
        ([1, 3], 2, "is 24 bytes but the data holds 16"),
    ):
        r = service_pb2.ModelInferRequest(model_name=urls["model"])
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            r.inputs.add(name=name, datatype="INT64", shape=shape)
            r.raw_input_contents.append(np.ones(n, np.int64).tobytes())
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(r, timeout=LIVE_TIMEOUT_S)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and expected in e.value.details(), e.value.details()
        _still_serves(urls, model, "grpc")


SERVER_START_TIMEOUT_S = 600  # generous: the whole start of `python -m engines.serving` on a loaded machine
DEATH_NOTICE_S = 10  # the bound: within this, the process has exited (the watchdog polls every 1 s)


def _start_cli(build, tmp_path):
    """`python -m engines.serving` on free ports; returns (process, {"http", "grpc", "log"}) once it serves."""
    import re
    import time

    out = (tmp_path / "stdout").open("w+")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engines.serving",
            "--build",
            str(build),
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--threads",
            "1",
        ],
        stdout=out,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        out.seek(0)
        m = re.search(r"http (\S+)\s+grpc (\S+) .* server log (\S+)", out.read())
        if m:
            return proc, {"http": m[1], "grpc": m[2], "log": m[3], "model": "tiny_onnx"}
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"python -m engines.serving did not start: {proc.communicate()[1][-2000:]}")


def _tree(pid):
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds tritonserver's pid through /proc (Linux)")
@pytest.mark.parametrize("victim", ["tritonserver", "stub"])
def test_the_process_exits_5_when_the_server_dies(built, tmp_path, victim):
    """Kill tritonserver (what its abort on a hostile request did) or the backend stub (what a gRPC shape
    overflow did): within DEATH_NOTICE_S `python -m engines.serving` exits 5 with one line naming the cause
    and the log, never a live process that serves nothing."""
    import signal

    build, model = built
    proc, urls = _start_cli(build, tmp_path)
    try:
        _still_serves(urls, model)
        triton = next(p for p in _tree(proc.pid) if Path(f"/proc/{p}/comm").read_text().strip() == "tritonserver")
        target = triton if victim == "tritonserver" else _tree(triton)[0]
        os.kill(target, signal.SIGKILL)
        code = proc.wait(timeout=DEATH_NOTICE_S)
        err = proc.stderr.read().strip().splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cause = "tritonserver exited (signal SIGKILL)" if victim == "tritonserver" else "Python backend stub"
    assert code == 5 and err[-1].startswith("error: ") and cause in err[-1] and urls["log"] in err[-1], err
    state = Path(f"/proc/{triton}/stat")
    assert not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] in "ZX"  # tritonserver stopped too
