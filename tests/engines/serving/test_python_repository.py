"""The Triton model repository engines.serving writes (main environment, no server): a Python-backend
config that Triton's protobuf parses, with the limits the model checks and the environment the stub runs;
model.py and the graph beside it; a folder the user named is never overwritten."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] (dev extra) not installed")

from engines.serving.ort_model import load_build  # noqa: E402
from engines.serving.python_repository import BACKEND_MODEL, write_python_repository  # noqa: E402
from export.errors import UsageError  # noqa: E402


@pytest.fixture(scope="module")
def loaded(served):
    return load_build(served.path, "mean")


def test_repository_holds_config_model_py_and_graph(loaded, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    model, limits, name = loaded
    folder = write_python_repository(
        tmp_path / "repo", "tiny_onnx", model, limits, max_batch=4, threads=1, env_path=Path("/some/venv")
    )
    cfg = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.backend == "python" and cfg.platform == "" and cfg.max_batch_size == 4
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params == {
        "max_sequence_length": str(limits.max_sequence),
        "vocab_size": "99",
        "type_vocab_size": "2",
        "ort_threads": "1",
        "EXECUTION_ENV_PATH": "/some/venv",
    }
    assert limits.max_sequence == 64
    assert (folder / "1" / "model.py").read_bytes() == BACKEND_MODEL.read_bytes()
    served = onnx.load(str(folder / "1" / "model.onnx"))
    assert [o.name for o in served.graph.output] == ["last_hidden_state", "sentence_embedding"]


def test_a_folder_with_files_is_refused(loaded, tmp_path):
    model, limits, _ = loaded
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UsageError, match="exists and is not an empty folder"):
        write_python_repository(tmp_path, "tiny_onnx", model, limits, max_batch=4)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
