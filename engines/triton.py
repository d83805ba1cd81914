"""`python -m engines.triton`: a roformer-trt build dir -> a Triton model repository.

In:  `build/<name>/` from `python -m export.build` (report.json, ONNX artifacts, optional engines).
Out: `<out>/<name>_onnx/{config.pbtxt,1/model.onnx}`: ONNX Runtime twin (rope-onnx graph, else the
     plain ONNX), always written, for CPU hosts;
     `<out>/<name>_<precision>/{config.pbtxt,1/model.plan}`: one TensorRT model per engine in
     report.json, written only when the build has engines.
Every config.pbtxt is parsed back with Triton's protobuf and checked against the ONNX graph before
the model folder is moved into place (staged in `<out>/.staging-<pid>`, then renamed).
Exit codes: export/errors.py (0 ok, 1 generated config failed its check, 2 usage, 3 missing package).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from export.errors import EXIT_OK, RoformerTrtError, UsageError

log = logging.getLogger("engines.triton")
DEFAULT_MAX_BATCH = 8  # ORT twin when the build has no engine to take a batch max from


@dataclass
class RepoReport:
    models: dict[str, dict] = field(default_factory=dict)  # model name -> {platform, dir, max_batch, notes}
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{n}: {m['platform']}, max_batch_size {m['max_batch_size']}, {m['dir']}" for n, m in self.models.items()]
        return "\n".join(lines)  # notes go to stderr


def read_report(build: Path) -> dict:
    path = build / "report.json"
    if not path.is_file():
        raise UsageError(f"{build} has no report.json; pass the folder written by python -m export.build")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON ({e}); rebuild with python -m export.build") from e


def artifact(build: Path, report: dict, *keys: str) -> Path | None:
    """First of `keys` present in report["artifacts"] whose file exists."""
    arts = report.get("artifacts") or {}
    for k in keys:
        if k in arts:
            p = build / arts[k]
            if not p.is_file():
                raise UsageError(f"report.json lists artifact {k!r} = {arts[k]} but {p} is missing; rebuild")
            return p
    return None


def engine_entries(report: dict) -> list[dict]:
    eng = report.get("engine") or {}
    return list(eng.get("engines") or [])


def _batch_max(entry: dict, sidecar: dict) -> tuple[int, list[int]]:
    profiles = entry.get("profiles") or sidecar.get("profiles") or []
    if not profiles:
        raise UsageError(f"engine {entry.get('plan')} lists no optimization profiles in report.json or its sidecar")
    maxes = [int(p["batch"][2]) for p in profiles]
    opts = [int(p["batch"][1]) for p in profiles]
    return max(maxes), opts


def _write_model(stage: Path, name: str, text: str, payload: Path | None = None, onnx_model=None) -> Path:
    import onnx

    d = stage / name
    (d / "1").mkdir(parents=True)
    (d / "config.pbtxt").write_text(text)
    if onnx_model is not None:
        big = onnx_model.ByteSize() > 1_800_000_000  # protobuf's 2 GiB cap, with margin
        onnx.save_model(onnx_model, str(d / "1" / "model.onnx"), save_as_external_data=big,
                        location="model.onnx.data" if big else None)
    if payload is not None:
        shutil.copyfile(payload, d / "1" / "model.plan")
    return d


def build_repository(build: Path, out: Path, pooling: str = "none", max_batch: int | None = None,
                     name: str | None = None, force: bool = False) -> RepoReport:
    import onnx

    from engines import triton_config as tc
    from engines.serving.pooling import add_sentence_embedding

    build, out = Path(build), Path(out)
    if not build.is_dir():
        raise UsageError(f"{build} is not a directory; pass the folder written by python -m export.build")
    report = read_report(build)
    name = name or build.resolve().name
    if max_batch is not None and max_batch < 0:
        raise UsageError(f"--max-batch must be >= 0, got {max_batch}")
    rep = RepoReport()

    engines = engine_entries(report)
    trt_models = []  # (model name, text, plan path, inputs, outputs, dtypes)
    if engines:
        graph = artifact(build, report, "rope-plugin", "onnx")
        if graph is None:
            raise UsageError("report.json has engines but no 'rope-plugin' or 'onnx' artifact to read I/O from")
        ins, outs = tc.read_onnx_io(graph)
        for entry in engines:
            plan = build / entry.get("plan", "")
            if not entry.get("plan") or not plan.is_file():
                raise UsageError(f"engine plan {plan} from report.json is missing; rebuild the engine")
            side = tc.load_sidecar(build, entry)
            bmax, opts = _batch_max(entry, side)
            if max_batch is not None and max_batch > bmax:
                raise UsageError(f"--max-batch {max_batch} exceeds the engine's batch max {bmax} ({plan.name}); "
                                 f"pass --max-batch <= {bmax} or rebuild with a larger profile")
            mb = bmax if max_batch is None else max_batch
            n_prof = len(entry.get("profiles") or side.get("profiles"))
            dtypes = tc.sidecar_dtypes(side)
            if not dtypes:
                rep.notes.append(f"{plan.name}: sidecar records no tensor dtypes; used the ONNX graph's")
            mname = f"{name}_{entry.get('precision', 'trt')}"
            cfg = tc.make_config(mname, "tensorrt_plan", ins, outs, mb, dtypes=dtypes,
                                 profiles=list(range(n_prof)), batch_hints=opts)
            text = tc.config_text(cfg)
            tc.check_config(text, ins, outs, dtypes)
            trt_models.append((mname, text, plan, mb))
        if pooling != "none" and not any(o.name == "sentence_embedding" for o in outs):
            rep.notes.append(f"--pooling {pooling} applies to the ONNX twin only: the TensorRT engines have no "
                             "sentence_embedding output (build them from a pooled graph to add one)")
        if max_batch is None:
            max_batch = min(m[3] for m in trt_models)
    else:
        reason = (report.get("engine") or {}).get("reason", "no engine in report.json")
        rep.notes.append(f"no TensorRT model: {reason}")

    src = artifact(build, report, "rope-onnx", "onnx")
    if src is None:
        raise UsageError(f"{build}/report.json lists neither a 'rope-onnx' nor an 'onnx' artifact")
    model = add_sentence_embedding(onnx.load(str(src)), pooling)
    ins, outs = tc.read_onnx_io(model)
    mb = DEFAULT_MAX_BATCH if max_batch is None else max_batch
    oname = f"{name}_onnx"
    cfg = tc.make_config(oname, "onnxruntime_onnx", ins, outs, mb)
    otext = tc.config_text(cfg)
    tc.check_config(otext, ins, outs)

    names = [oname] + [m[0] for m in trt_models]
    out.mkdir(parents=True, exist_ok=True)
    clash = [n for n in names if (out / n).exists()]
    if clash and not force:
        raise UsageError(f"{out} already has {', '.join(clash)}; pass --force to replace them")
    stage = out / f".staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)  # only a crashed run of this same pid could have left it
    try:
        stage.mkdir()
        _write_model(stage, oname, otext, onnx_model=model)
        for mname, text, plan, _ in trt_models:
            _write_model(stage, mname, text, payload=plan)
        for n in names:  # a model folder is either the old one or the complete new one
            if (out / n).exists():
                os.replace(out / n, stage / f"old-{n}")
            os.replace(stage / n, out / n)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # leftovers are our own temp copies only
    rep.models[oname] = {"platform": "onnxruntime_onnx", "max_batch_size": mb, "dir": str(out / oname),
                         "source": src.name, "pooling": pooling}
    for mname, _, plan, mbt in trt_models:
        rep.models[mname] = {"platform": "tensorrt_plan", "max_batch_size": mbt, "dir": str(out / mname),
                             "source": plan.name}
    return rep


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engines.triton",
        description="Write a Triton model repository from a roformer-trt build dir: a TensorRT model per engine "
                    "(when built) and an ONNX Runtime twin for CPU hosts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="example: python -m engines.triton --build build/roformer_base --out model_repository --pooling mean",
    )
    p.add_argument("--build", required=True, type=Path, help="folder written by python -m export.build")
    p.add_argument("--out", required=True, type=Path, help="Triton model repository (created if missing)")
    p.add_argument("--pooling", choices=["mean", "cls", "none"], default="none",
                   help="add a sentence_embedding [batch, hidden] output to the ONNX twin")
    p.add_argument("--max-batch", type=int, default=None,
                   help=f"max_batch_size (default: the engine's batch max, else {DEFAULT_MAX_BATCH})")
    p.add_argument("--name", default=None, help="model name prefix (default: the build folder's name)")
    p.add_argument("--force", action="store_true", help="replace model folders of the same name in --out")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--verbose", action="store_true", help="debug logs and tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    try:
        rep = build_repository(args.build, args.out, args.pooling, args.max_batch, args.name, args.force)
    except RoformerTrtError as e:
        if args.verbose:
            log.exception("failed")
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    for n in rep.notes:
        print(f"note: {n}", file=sys.stderr)
    print(json.dumps({"models": rep.models, "notes": rep.notes}, indent=2) if args.json else rep.summary())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
