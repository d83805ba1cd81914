"""A roformer-trt build dir -> a Triton model repository (CLI: `python -m engines.triton`).

In:  `build/<name>/` from `python -m export.build` (report.json, ONNX artifacts, optional engines).
Out: `<out>/<name>_onnx/{config.pbtxt,1/model.onnx}`: ONNX Runtime twin (rope-onnx graph, else the
     plain ONNX), always written, for CPU hosts;
     `<out>/<name>_<precision>/{config.pbtxt,1/model.plan}`: one TensorRT model per engine in
     report.json, written only when the build has engines: one instance group (`--instances` per GPU)
     listing every optimization profile, checked against the backend's rules (engines.triton.backend_rules)
     to take every batch 1..max_batch_size x every length 1..max-len on every instance.
Pooling: a build whose TensorRT-bound graph computes `sentence_embedding` (export.build --pooling) serves
it from both models: the ONNX twin gets the same pooling (export.passes.pooling); `--pooling` must then
be that mode or none (exit 2 otherwise); the twin gets the whole pipeline (Dense layers, truncation). Without it,
`--pooling MODE` adds the output to the twin only.
Only a build that passed is published, and only the files its report describes: every file is read
through export.folder.artifacts (inside the build folder, sha256 as recorded). Every config.pbtxt is parsed
back with Triton's protobuf and checked against the ONNX graph before the model folder is moved into
place (staged in `<out>/.staging-<random>`, then renamed). Nothing is written outside `--out`.
Exit codes: export/errors.py (0 ok, 1 the build did not pass or a generated config failed its check,
2 usage, 3 missing package).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from engines.serving.ort_model import limits_from_report
from engines.tensorrt.profiles import INT32_MAX
from engines.tensorrt.sidecar import load_sidecar
from engines.triton import backend_rules
from engines.triton import config as tc
from engines.triton.pooling import tensorrt_graph, twin_pooling
from engines.triton.twin import twin_keys
from export.errors import UsageError, VerificationError
from export.folder.artifacts import artifact, verify_artifact
from export.folder.staging import check_out_path
from export.onnx_io import save_model
from export.passes.pooling import EMBEDDING, Pooling, add_sentence_embedding
from export.report.persist import read_report
from export.report.schema import Report
from export.report.verdict import read_build

DEFAULT_MAX_BATCH = 8  # ORT twin when the build has no engine to take a batch max from
MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # a Triton model name is a folder name: no separators


@dataclass
class RepoReport:
    models: dict[str, dict] = field(default_factory=dict)  # model name -> {platform, dir, max_batch, notes}
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"{n}: {m['platform']}, max_batch_size {m['max_batch_size']}, {m['dir']}" for n, m in self.models.items()
        ]
        return "\n".join(lines)  # notes go to stderr


@dataclass
class ModelFolder:
    """One model of the repository, ready to write: its config and the payload it serves."""

    name: str
    platform: str
    config_text: str
    max_batch: int
    source: str  # the build file it was made from
    plan: Path | None = None  # tensorrt_plan: copied as 1/model.plan
    onnx_model: onnx.ModelProto | None = None  # onnxruntime_onnx: saved as 1/model.onnx
    pooling: str | None = None

    def summary(self, out: Path) -> dict:
        entry = {
            "platform": self.platform,
            "max_batch_size": self.max_batch,
            "dir": str(out / self.name),
            "source": self.source,
        }
        return entry | ({"pooling": self.pooling} if self.pooling is not None else {})


def check_model_name(name: str) -> str:
    if not MODEL_NAME.fullmatch(name) or name in (".", ".."):
        raise UsageError(
            f"--name {name!r} is not a valid Triton model name; use letters, digits, '_', '-' and '.' "
            "(no path separators)"
        )
    return name


def served_parameters(report: Report) -> dict[str, str]:
    """{max_sequence_length: N}, the positions the build takes (engines.client truncates to it; left out if
    unknown), and {prompts: JSON} when the family declares text prefixes (engines.client --prompt)."""
    n = limits_from_report(report.to_dict()).max_sequence
    return ({tc.MAX_SEQUENCE_LENGTH: str(n)} if n else {}) | tc.prompts_parameter(report.model)


def _batch_max(entry: dict, sidecar: dict) -> tuple[int, list[dict]]:
    profiles = entry.get("profiles") or sidecar.get("profiles") or []
    if not profiles:
        raise UsageError(f"engine {entry.get('plan')} lists no optimization profiles in report.json or its sidecar")
    low = max(int(p["batch"][0]) for p in profiles)
    if low > 1:  # Triton's batcher sends any batch from 1 up: every instance must take batch 1
        raise UsageError(
            f"engine {entry.get('plan')} takes batches from {low} only, and Triton sends batches of 1 "
            "up; rebuild it with --batch 1,OPT,MAX"
        )
    return max(int(p["batch"][2]) for p in profiles), profiles


def tensorrt_models(
    build: Path, report: Report, name: str, max_batch: int | None, pooling: str, rep: RepoReport, instances: int = 1
) -> list[ModelFolder]:
    """One tensorrt_plan model per engine in the report (none when the build has no engine)."""
    engines = list((report.engine or {}).get("engines") or [])
    if not engines:
        rep.notes.append(f"no TensorRT model: {(report.engine or {}).get('reason', 'no engine in report.json')}")
        return []
    graph = tensorrt_graph(build, report)
    if graph is None:
        raise UsageError(
            "report.json has engines but no 'tensorrt-onnx', 'rope-plugin' or 'onnx' artifact to read I/O from"
        )
    ins, outs = tc.read_onnx_io(graph)
    max_len = int((report.export.get("max_len") if report.export else None) or 0)
    models = [
        _tensorrt_model(build, report, entry, name, max_batch, (ins, outs), max_len, instances, rep)
        for entry in engines
    ]
    if pooling != "none" and not any(o.name == EMBEDDING for o in outs):
        rep.notes.append(
            f"--pooling {pooling} applies to the ONNX twin only: the TensorRT engines have no "
            f"{EMBEDDING} output (build with python -m export.build --pooling {pooling} to add one)"
        )
    return models


def _tensorrt_model(
    build: Path,
    report: Report,
    entry: dict,
    name: str,
    max_batch: int | None,
    io,
    max_len: int,
    instances: int,
    rep: RepoReport,
) -> ModelFolder:
    """The model folder of one engine: its config checked against the graph and against the backend's rules."""
    plan = verify_artifact(build, str(entry.get("plan") or ""), report)
    side = load_sidecar(verify_artifact(build, entry["sidecar"], report)) if entry.get("sidecar") else {}
    bmax, profiles = _batch_max(entry, side)
    if max_batch is not None and max_batch > bmax:
        raise UsageError(
            f"--max-batch {max_batch} exceeds the engine's batch max {bmax} ({plan.name}); "
            f"pass --max-batch <= {bmax} or rebuild with a larger profile"
        )
    check_engine_outputs(plan.name, side, io[1])
    dtypes = tc.sidecar_dtypes(side)
    if not dtypes:
        rep.notes.append(f"{plan.name}: sidecar records no tensor dtypes; used the ONNX graph's")
    mb = bmax if max_batch is None else max_batch
    mname = f"{name}_{entry.get('precision', 'trt')}"
    text = tensorrt_config(mname, io, mb, dtypes, profiles, instances, max_len, served_parameters(report))
    return ModelFolder(mname, "tensorrt_plan", text, mb, plan.name, plan=plan)


def check_engine_outputs(plan: str, sidecar: dict, outputs: list) -> None:
    """The outputs the sidecar recorded from the built network must be the graph's (the config lists the
    graph's): VerificationError otherwise. A sidecar that records none is not checked."""
    engine = [o.get("name") for o in sidecar.get("outputs") or [] if isinstance(o, dict)]
    # key=str: a sidecar output without a name (None) or with a number sorts beside the strings, and differs
    if engine and sorted(engine, key=str) != sorted((o.name for o in outputs), key=str):
        raise VerificationError(
            f"{plan} has outputs {engine} (its sidecar), the graph it was built from "
            f"{[o.name for o in outputs]}; rebuild the engine"
        )


def tensorrt_config(
    name: str,
    io,
    max_batch: int,
    dtypes: dict[str, str],
    profiles: list[dict],
    instances: int,
    max_len: int = 0,
    parameters: dict[str, str] | None = None,
) -> str:
    """config.pbtxt of a tensorrt_plan model for an engine with these profile rows (report.json `profiles`),
    parsed back and checked against the graph's I/O and against the backend's rules: every instance must take
    every batch 1..max_batch x every length 1..max_len (0: the longest profile's); VerificationError otherwise."""
    ins, outs = io
    cfg = tc.make_config(
        name,
        "tensorrt_plan",
        ins,
        outs,
        max_batch,
        dtypes=dtypes,
        profiles=list(range(len(profiles))),
        instances=instances,
        parameters=parameters,
    )
    text = tc.config_text(cfg)
    parsed = tc.check_config(text, ins, outs, dtypes)
    longest = max_len or max(int(p["sequence"][2]) for p in profiles)
    refused = backend_rules.refused_shapes(parsed, backend_rules.profile_boxes(profiles), longest)
    if refused:
        raise VerificationError(
            f"{name}/config.pbtxt: Triton's TensorRT backend would fail requests it accepts "
            f"(batch 1..max_batch_size x sequence 1..{longest}): " + "; ".join(refused)
        )
    return text


def _load(path: Path, weights: bool = True) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=weights)
    except (DecodeError, onnx.onnx_cpp2py_export.checker.ValidationError, ValueError) as e:
        raise UsageError(
            f"{path} is not a loadable ONNX model ({str(e).splitlines()[0][:100]}); rebuild it with "
            "python -m export.build"
        ) from None


def onnx_model(
    build: Path, report: Report, name: str, pooling: str | Pooling, max_batch: int, onnx_twin: str = "auto"
) -> ModelFolder:
    """The ONNX Runtime twin (engines.triton.twin: the INT8 CPU twin when the build has one, unless --onnx-twin
    says otherwise; else the rope-onnx graph, else the plain export), with the pooling output added
    (engines.triton.pooling.twin_pooling: the build's own, normalisation included, when it has one; a graph
    that has the output already is served as it is)."""
    keys = twin_keys(report, onnx_twin)
    src = artifact(build, report, *keys)
    if src is None:
        raise UsageError(f"{build}/report.json lists none of the artifacts {', '.join(keys)}")
    model = add_sentence_embedding(_load(src), pooling)
    ins, outs = tc.read_onnx_io(model)
    oname = f"{name}_onnx"
    text = tc.config_text(
        tc.make_config(oname, "onnxruntime_onnx", ins, outs, max_batch, parameters=served_parameters(report))
    )
    tc.check_config(text, ins, outs)
    mode = pooling.describe() if isinstance(pooling, Pooling) else pooling
    return ModelFolder(oname, "onnxruntime_onnx", text, max_batch, src.name, onnx_model=model, pooling=mode)


def write_repository(out: Path, models: list[ModelFolder], force: bool) -> None:
    """Stage every model folder under out/, then swap each into place: old folder or complete new one."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a folder for the model repository")
    try:
        out.mkdir(parents=True, exist_ok=True)
        clash = [m.name for m in models if (out / m.name).exists()]
        if clash and not force:
            raise UsageError(f"{out} already has {', '.join(clash)}; pass --force to replace them")
        stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    except OSError as e:
        raise UsageError(f"--out {out} is not writable ({e.strerror}); pass a folder you can write to") from None
    try:
        for m in models:
            _write_model(stage, m)
        for m in models:
            old = stage / f"old-{m.name}"
            if (out / m.name).exists():
                os.replace(out / m.name, old)
            try:
                os.replace(stage / m.name, out / m.name)
            except OSError:
                if old.exists():  # put the previous folder back before the staging folder goes
                    os.replace(old, out / m.name)
                raise
    except OSError as e:
        raise UsageError(
            f"cannot write the model repository in {out} ({e.strerror}); free space or pick another --out"
        ) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # leftovers are our own temp copies only


def planned_models(build: Path, name: str) -> list[str]:
    """The model folders a run will write, from the report alone (read, not yet judged: that costs hashing)."""
    report = read_report(build) if build.is_dir() else None
    engines = ((report.engine or {}).get("engines") or []) if report else []
    return [f"{name}_onnx"] + [f"{name}_{e.get('precision', 'trt')}" for e in engines if isinstance(e, dict)]


def check_out(out: Path, names: list[str], force: bool) -> None:
    """--out problems found from the path and the planned model names alone (UsageError, exit 2)."""
    check_out_path(out)
    clash = [n for n in names if (out / n).exists()]
    if clash and not force:
        raise UsageError(f"{out} already has {', '.join(clash)}; pass --force to replace them")


def _write_model(stage: Path, m: ModelFolder) -> None:
    d = stage / m.name
    (d / "1").mkdir(parents=True)
    (d / "config.pbtxt").write_text(m.config_text)
    if m.onnx_model is not None:
        save_model(m.onnx_model, d / "1" / "model.onnx")  # weights beside it only past protobuf's 2 GB
    if m.plan is not None:
        shutil.copyfile(m.plan, d / "1" / "model.plan")


def build_repository(
    build: Path,
    out: Path,
    pooling: str = "none",
    max_batch: int | None = None,
    name: str | None = None,
    force: bool = False,
    instances: int = 1,
    onnx_twin: str = "auto",
) -> RepoReport:
    build, out = Path(build), Path(out)
    if max_batch is not None and not 0 <= max_batch <= INT32_MAX:
        raise UsageError(
            f"--max-batch must be from 0 to {INT32_MAX} (Triton's max_batch_size is int32), got {max_batch}"
        )
    if not 1 <= instances <= INT32_MAX:
        raise UsageError(f"--instances must be from 1 to {INT32_MAX} (Triton's count is int32), got {instances}")
    name = check_model_name(build.resolve().name if name is None else name)
    check_out(out, planned_models(build, name), force)  # before any work: the build is judged after this
    report = read_build(build)
    rep = RepoReport()
    twin = twin_pooling(build, report, pooling)  # exit 2 when --pooling disagrees with a pooled build
    trt = tensorrt_models(build, report, name, max_batch, pooling, rep, instances)
    if max_batch is None:
        max_batch = min((m.max_batch for m in trt), default=DEFAULT_MAX_BATCH)
    models = [onnx_model(build, report, name, twin, max_batch, onnx_twin), *trt]
    write_repository(out, models, force)
    rep.models = {m.name: m.summary(out) for m in models}
    return rep
