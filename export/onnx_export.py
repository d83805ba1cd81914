"""A PyTorch model of a supported family -> ONNX with dynamic batch/sequence axes, checked before anyone uses it.

In: an HF model (from export.checkpoint.rebuild), the task, max_len, exporter and opset; its family (found from
its config) names the inputs (`Family.inputs`, e.g. no token_type_ids for ModernBERT).
Out: an ONNX file at `out_path` with its weights in `<name>.data` beside it (written in a temp folder,
then renamed) that passes `onnx.checker.check_model(full_check=True)`. The weights go to external data
at every size, so later passes read the graph without them and graphs of the same precision share them.
The graph runs up to `max_len` tokens, also past the checkpoint's `max_position_embeddings`: a family whose
position table is a stored formula (RoFormer) is exported with a longer one swapped in for the export and
restored after it (`Family.at_least`: the caller's model is left as it was); rotary computed from positions
(ModernBERT) needs nothing. The file declares that length (`MAX_LEN_KEY`) and its family (`FAMILY_KEY`) in its
metadata, which engines.build and export.diagnose read.
At opset 23 the dynamo exporter's `RotaryEmbedding` nodes read batch-1 caches, which ONNX Runtime and TensorRT
refuse at batch > 1: they are repaired here, before the checker, by the one change
export/passes/rotary/repair.py makes (the caches expanded to x's batch; `rotary_caches_expanded` counts them).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import onnx
import torch

from export.errors import UsageError
from export.families.registry import family_of_model
from export.inputs.numbers import parse_int
from export.onnx_io import check_locations, has_external, move_into_place, save_model
from export.passes.rotary.repair import expand_batch_one_caches
from export.report.schema import ExportSection
from export.spec import ExportSpec

log = logging.getLogger(__name__)

OPSETS = {"dynamo": range(18, 24), "torchscript": range(17, 21)}
DEFAULT_OPSET = {"dynamo": 18, "torchscript": 17}
# The shortest --max-len: the dynamo exporter cannot make a dimension whose range is 1..1 ("inconsistent
# min=1, max=1"), and validation wants a prime length beside length 1. Measured: 2 exports, rewrites and
# validates with both exporters, every rope mode and fp16 (tests/export/cli/test_entry.py builds at 2).
MIN_MAX_LEN = 2


MAX_LEN_KEY = "roformer_trt.max_len"  # metadata_props: the longest sequence the graph serves
FAMILY_KEY = "roformer_trt.family"  # metadata_props: the family whose layer map export.diagnose uses


def declared_max_len(model: onnx.ModelProto) -> int | None:
    """The longest sequence a graph of ours declares (metadata MAX_LEN_KEY), None when it declares none;
    NumberError (exit 2) for a value that is not a length."""
    for prop in model.metadata_props:
        if prop.key == MAX_LEN_KEY:
            return parse_int(prop.value, what=f"the graph's metadata {MAX_LEN_KEY}", lo=1, hi=2**31 - 1)
    return None


def check_export_args(exporter: str, opset: int | None) -> int:
    if exporter not in OPSETS:
        raise UsageError(f"--exporter {exporter!r} is unknown; use dynamo or torchscript")
    opset = DEFAULT_OPSET[exporter] if opset is None else opset
    if exporter == "dynamo" and opset == 17:
        raise UsageError(
            "--exporter dynamo --opset 17 is refused: torch 2.13 writes an invalid Split there; "
            "use --opset 18 or newer, or --exporter torchscript"
        )
    if opset not in OPSETS[exporter]:
        r = OPSETS[exporter]
        raise UsageError(f"--opset {opset} is not supported by the {exporter} exporter; use {r.start}..{r.stop - 1}")
    return opset


def declared_family(model: onnx.ModelProto) -> str | None:
    """The family a graph of ours declares (metadata FAMILY_KEY), None when it declares none."""
    return next((p.value for p in model.metadata_props if p.key == FAMILY_KEY), None)


class _Wrapper(torch.nn.Module):
    """Positional inputs in ExportSpec.inputs order, tuple outputs in ExportSpec order: what both exporters want."""

    def __init__(self, model: torch.nn.Module, spec: ExportSpec):
        super().__init__()
        self.model, self.inputs, self.names = model, spec.inputs, spec.output_names

    def forward(self, *inputs):
        out = self.model(**dict(zip(self.inputs, inputs, strict=True)), return_dict=True)
        return tuple(out[n] for n in self.names)


def example_inputs(spec: ExportSpec, vocab_size: int, batch: int = 2, seq: int = 7, choices: int = 3):
    """input_ids drawn from the vocab, attention_mask ones, anything else (token_type_ids) zeros."""
    g = torch.Generator().manual_seed(0)
    shape = (batch, choices, seq) if spec.task == "multiple-choice" else (batch, seq)
    ids = torch.randint(0, vocab_size, shape, generator=g)
    fill = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return tuple(fill.get(n, torch.zeros_like(ids)) for n in spec.inputs)


def export_onnx(
    model: torch.nn.Module,
    task: str,
    out_path: str | Path,
    max_len: int,
    exporter: str = "dynamo",
    opset: int | None = None,
) -> ExportSection:
    """Export, check and atomically write. Returns report.json `export`."""
    opset = check_export_args(exporter, opset)
    if max_len < MIN_MAX_LEN:
        raise UsageError(
            f"max_len {max_len} is below {MIN_MAX_LEN}, the shortest length export and validation "
            f"support; pass --max-len {MIN_MAX_LEN} or more"
        )
    family = family_of_model(model)
    spec = ExportSpec(task, family.inputs)
    out_path = Path(out_path)
    wrapper = _Wrapper(model, spec).eval()
    args = example_inputs(spec, family.facts(model.config).vocab_size, seq=min(7, max_len))  # a trace within the range
    t0 = time.perf_counter()
    tmpdir = Path(tempfile.mkdtemp(prefix=".export-", dir=out_path.parent))
    try:
        tmp = tmpdir / out_path.name
        with torch.no_grad(), warnings.catch_warnings(), _quiet(), family.at_least(model, max_len) as rows:
            warnings.simplefilter("ignore")  # exporter deprecation/tracer chatter; the checks below are the truth
            if exporter == "dynamo":
                _export_dynamo(wrapper, args, spec, tmp, opset, max_len)
            else:
                _export_torchscript(wrapper, args, spec, tmp, opset)
        expanded = _finalize(tmp, max_len, family.name)
        _check_dynamic(tmp, spec)
        files = move_into_place(tmpdir, out_path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return {
        "exporter": exporter,
        "opset": opset,
        "max_len": max_len,
        "table_rows": rows,
        "rotary_caches_expanded": expanded,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "seconds": round(time.perf_counter() - t0, 2),
        "files": files,
    }


def _export_dynamo(wrapper, args, spec: ExportSpec, path: Path, opset: int, max_len: int) -> None:
    from torch.export import Dim

    # "torchvision is not installed. Skipping torchvision::nms" is noise for a text model
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    dims = {
        axis: Dim(name, min=1, max=max_len if name == "sequence" else 4096) for axis, name in spec.input_axes.items()
    }
    program = torch.onnx.export(
        wrapper,
        args,
        dynamo=True,
        opset_version=opset,
        dynamic_shapes=(tuple(dims for _ in spec.inputs),),  # forward(*inputs): one tuple, a dict per input
        input_names=list(spec.inputs),
        output_names=list(spec.output_names),
        optimize=True,
        verbose=False,
    )
    assert program is not None  # dynamo=True returns the ONNXProgram (None only from the TorchScript exporter)
    program.save(str(path), external_data=True)  # streamed to <name>.data: no serialized copy in memory


def _export_torchscript(wrapper, args, spec: ExportSpec, path: Path, opset: int) -> None:
    torch.onnx.export(
        wrapper,
        args,
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=list(spec.inputs),
        output_names=list(spec.output_names),
        dynamic_axes=spec.dynamic_axes(),
        do_constant_folding=True,
    )


def _finalize(path: Path, max_len: int, family: str) -> int:
    """Weights to `<name>.data` (the torchscript exporter writes them inline below 2 GB), the exporter's batch-1
    rotary caches repaired, the declared length and family in the metadata, then the full checker on the file,
    which reads the graph and not the weights. Returns the number of RotaryEmbedding nodes repaired."""
    model = onnx.load(str(path), load_external_data=False)
    if not has_external(model):
        model = onnx.load(str(path))
    else:
        check_locations(model)
    expanded = expand_batch_one_caches(model)
    props = {p.key: p.value for p in model.metadata_props}
    onnx.helper.set_model_props(model, {**props, MAX_LEN_KEY: str(max_len), FAMILY_KEY: family})
    save_model(model, path, external=not has_external(model))
    del model
    onnx.checker.check_model(str(path), full_check=True)
    return expanded


def _check_dynamic(path: Path, spec: ExportSpec) -> None:
    """Every input axis the spec calls dynamic must be symbolic in the file: nothing froze the sequence."""
    model = onnx.load(str(path), load_external_data=False)
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        for axis, name in spec.input_axes.items():
            if dims[axis].dim_value:
                raise RuntimeError(f"export froze {value.name} axis {axis} ({name}) to {dims[axis].dim_value}")


@contextlib.contextmanager
def _quiet():
    """The dynamo exporter prints progress lines of its own on stdout; keep stdout for our results."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
