"""A Triton model repository that serves a build through Triton's Python backend (no PyTriton proxy).

In:  the graph to serve (ONNX, pooling output added), its request Limits, a model name, --max-batch,
     ONNX Runtime threads, and the Python environment the backend stub should run (a venv, or None).
Out: `<out>/<name>/config.pbtxt` (`backend: "python"`, int64 inputs [-1], dynamic batching, parameters
     max_sequence_length / vocab_size / type_vocab_size / ort_threads / EXECUTION_ENV_PATH, and the build's
     `prompts` when its family declares text prefixes),
     `<out>/<name>/1/model.py` (engines/serving/backend_model.py) and `<out>/<name>/1/model.onnx`.
The config is parsed back with Triton's protobuf and compared with the graph before anything is written.
`<out>` must be missing or empty: nothing is overwritten.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx

from engines.serving.ort_model import Limits
from engines.triton import config as tc
from export.errors import UsageError
from export.onnx_io import save_model

BACKEND_MODEL = Path(__file__).with_name("backend_model.py")
QUEUE_DELAY_US = 100  # dynamic batching: how long a request waits for others to join its batch


def python_config_text(
    name: str,
    model: onnx.ModelProto,
    limits: Limits,
    max_batch: int,
    threads: int | None,
    env_path: Path | None,
    extra: dict[str, str] | None = None,
) -> str:
    """extra: more config parameters (tc.prompts_parameter)."""
    ins, outs = tc.read_onnx_io(model)
    params = {
        tc.MAX_SEQUENCE_LENGTH: limits.max_sequence,
        "vocab_size": limits.vocab_size,
        "type_vocab_size": limits.type_vocab_size,
        "ort_threads": threads,
        "EXECUTION_ENV_PATH": env_path,
        **(extra or {}),
    }
    cfg = tc.make_config(
        name,
        "python",
        ins,
        outs,
        max_batch,
        queue_delay_us=QUEUE_DELAY_US,
        parameters={k: str(v) for k, v in params.items() if v is not None},
    )
    text = tc.config_text(cfg)
    tc.check_config(text, ins, outs)
    return text


def write_python_repository(
    out: Path,
    name: str,
    model: onnx.ModelProto,
    limits: Limits,
    max_batch: int,
    threads: int | None = None,
    env_path: Path | None = None,
    extra: dict[str, str] | None = None,
) -> Path:
    """Writes the model folder `<out>/<name>`; returns it. extra: more config parameters (the build's prompts)."""
    out = Path(out)
    if max_batch < 1:
        raise UsageError(f"--max-batch must be >= 1, got {max_batch}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--repository {out} exists and is not an empty folder; pass a new or empty folder")
    text = python_config_text(name, model, limits, max_batch, threads, env_path, extra)
    version = out / name / "1"
    try:
        version.mkdir(parents=True)
        (out / name / "config.pbtxt").write_text(text)
        shutil.copyfile(BACKEND_MODEL, version / "model.py")
        save_model(model, version / "model.onnx")  # weights beside it only past protobuf's 2 GB
    except OSError as e:
        raise UsageError(
            f"cannot write the model repository in {out} ({e.strerror}); free space or pick another --repository"
        ) from None
    return out / name
