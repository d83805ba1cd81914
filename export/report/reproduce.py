"""Commands a TensorRT user runs to check our engine with NVIDIA's own tools (trtexec, Polygraphy).

`reproduce_commands(...)` is a pure function of plain inputs (file names, the report's profile rows,
sizes, tolerances); it touches no file and imports nothing heavy, so report.md / report.json can carry
its output on any machine. `render_markdown(cmds)` formats the result for report.md.

Checked by hand against the sources of TensorRT tags v10.16 and v11.1 (tests/export/report/test_reproduce.py pins
the structure):
  - trtexec (samples/common/sampleOptions.cpp): several profiles are `--profile=i` followed by that
    profile's `--minShapes/--optShapes/--maxShapes` (shape flags repeated without `--profile` are an
    error); a shape spec is `name:1x128,name2:...`; `--stronglyTyped` takes the types from the file (11.x
    has no `--fp16`/`--bf16`, and its `--stronglyTyped` is a deprecated no-op: every network is strongly typed
    there); `--dynamicPlugins` calls the library's getCreators (our
    libroformer_trt_plugin.so), `--staticPlugins` only dlopens (libroformer_trt_plugin_static.so).
  - Polygraphy (tools/Polygraphy/polygraphy/tools/args): `--trt-min/opt/max-shapes` once per profile
    (action=append); `--plugins` only dlopens, so it takes the self-registering library;
    `--val-range name:[lo,hi]` is inclusive; `--optimization-profile`, `--input-shapes`,
    `--save-inputs/--save-outputs`, `--load-inputs/--load-outputs`, `--check-error-stat max`,
    `--atol/--rtol`, `--strongly-typed`.
The TensorRT-bound graph holds RoformerRotary nodes with no ONNX function, so ONNX Runtime cannot run
it: Polygraphy builds the engine from it and saves inputs and outputs, then runs the plain `model.onnx`
in ONNX Runtime on those inputs and compares.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

POLY_INPUTS = "polygraphy_inputs.json"
POLY_OUTPUTS = "polygraphy_trt_outputs.json"


def _dims(row: Mapping, which: int, rank: int) -> list[int]:
    """[batch, (choices,) sequence] of one profile row (report.json `profiles`), which: 0 min, 1 opt, 2 max."""
    dims = [row["batch"][which]]
    if rank == 3:
        c = row.get("choices")
        if c is None:
            raise ValueError("inputs of rank 3 need a `choices` range in every profile row")
        dims.append(c[which] if isinstance(c, (list, tuple)) else int(c))
    dims.append(row["sequence"][which])
    return dims


def _trtexec_spec(inputs: Sequence[str], dims: list[int]) -> str:
    return ",".join(f"{name}:{'x'.join(map(str, dims))}" for name in inputs)


def _poly_specs(inputs: Sequence[str], dims: list[int]) -> list[str]:
    return [f"{name}:[{','.join(map(str, dims))}]" for name in inputs]


def reproduce_commands(
    *,
    trt_onnx: str,
    reference_onnx: str,
    plan: str,
    profiles: Sequence[Mapping],
    precision: str,
    vocab_size: int,
    type_vocab_size: int | None,
    atol: float,
    rtol: float,
    plugin_lib: str | None,
    static_plugin_lib: str | None,
    inputs: Sequence[str],
    rank: int = 2,
) -> dict:
    """{"trtexec": [command], "polygraphy": [build+run, compare], "notes": [...]}; each command is one shell line.

    trt_onnx: the TensorRT-bound file (report.json artifacts.tensorrt-onnx; RoformerRotary nodes when the
    rotary stage ran); reference_onnx: the plain export `model.onnx` (ONNX Runtime runs it); plan: the
    engine file trtexec writes (name it apart from our own plan); profiles: report.json `profiles`
    ({"index", "batch": [min, opt, max], "sequence": [...], optional "choices"}); precision: recorded in
    the notes only (the file carries its types: strongly typed); vocab_size / type_vocab_size: token-id
    ranges for the random inputs (type_vocab_size None: no token_type_ids); inputs: the graph's inputs;
    atol/rtol: the report's tolerances; plugin_lib / static_plugin_lib:
    paths of libroformer_trt_plugin.so (getCreators) and libroformer_trt_plugin_static.so (registers at
    load time), None when the graph has no plugin node or the library was not built; rank: 2 for
    [batch, sequence] inputs, 3 for multiple choice [batch, choices, sequence].
    """
    if not profiles:
        raise ValueError("at least one profile row is needed")
    if vocab_size < 1 or (type_vocab_size is not None and type_vocab_size < 1):
        raise ValueError(f"vocab_size {vocab_size} and type_vocab_size {type_vocab_size} must be >= 1")
    uses_plugin = plugin_lib is not None or static_plugin_lib is not None
    last = len(profiles) - 1
    run_dims = _dims(profiles[last], 2, rank)  # the longest sequence, the most demanding case
    trtexec = _trtexec(trt_onnx, plan, profiles, plugin_lib, inputs, rank, run_dims)
    build, compare = _polygraphy(
        trt_onnx, reference_onnx, profiles, static_plugin_lib, inputs, rank, run_dims, vocab_size, type_vocab_size
    )
    compare += ["--atol", f"{atol:g}", "--rtol", f"{rtol:g}"]
    notes = _notes(precision, uses_plugin, static_plugin_lib)
    return {"trtexec": [shlex.join(trtexec)], "polygraphy": [shlex.join(build), shlex.join(compare)], "notes": notes}


def _trtexec(trt_onnx, plan, profiles, plugin_lib, inputs, rank, run_dims) -> list[str]:
    trtexec = ["trtexec", f"--onnx={trt_onnx}", f"--saveEngine={plan}", "--stronglyTyped"]
    if plugin_lib:
        trtexec.append(f"--dynamicPlugins={plugin_lib}")
    for i, row in enumerate(profiles):
        trtexec += [f"--profile={i}"] + [
            f"--{k}Shapes={_trtexec_spec(inputs, _dims(row, w, rank))}" for w, k in enumerate(("min", "opt", "max"))
        ]
    trtexec += [f"--useProfile={len(profiles) - 1}", f"--shapes={_trtexec_spec(inputs, run_dims)}"]
    return trtexec


def _polygraphy(
    trt_onnx, reference_onnx, profiles, static_plugin_lib, inputs, rank, run_dims, vocab_size, type_vocab_size
) -> tuple[list[str], list[str]]:
    """Build+run the engine saving inputs and outputs; rerun the reference on them (tolerances appended by the
    caller)."""

    ranges = {
        "input_ids": f"[0,{vocab_size - 1}]",
        "attention_mask": "[1,1]",
    }
    if type_vocab_size is not None:
        ranges["token_type_ids"] = f"[0,{type_vocab_size - 1}]"
    build = ["polygraphy", "run", trt_onnx, "--trt", "--strongly-typed"]
    if static_plugin_lib:
        build += ["--plugins", static_plugin_lib]
    for w, k in enumerate(("min", "opt", "max")):
        for row in profiles:
            build += [f"--trt-{k}-shapes", *_poly_specs(inputs, _dims(row, w, rank))]
    build += [
        "--optimization-profile",
        str(len(profiles) - 1),
        "--input-shapes",
        *_poly_specs(inputs, run_dims),
        "--val-range",
        *[f"{n}:{ranges[n]}" for n in inputs if n in ranges],
        "--save-inputs",
        POLY_INPUTS,
        "--save-outputs",
        POLY_OUTPUTS,
    ]
    compare = [
        "polygraphy",
        "run",
        reference_onnx,
        "--onnxrt",
        "--load-inputs",
        POLY_INPUTS,
        "--load-outputs",
        POLY_OUTPUTS,
        "--check-error-stat",
        "max",
    ]
    return build, compare


def _notes(precision: str, uses_plugin: bool, static_plugin_lib: str | None) -> list[str]:
    notes = [
        f"The file is strongly typed (its {precision} types are in the graph): trtexec takes --stronglyTyped, "
        "not --fp16/--bf16 (TensorRT 11 has neither). trtexec 11.x accepts --stronglyTyped as a deprecated no-op "
        "(every network is strongly typed there); 10.x needs it.",
        "One --profile=i group of --minShapes/--optShapes/--maxShapes per profile; repeating the shape flags "
        "without --profile is an error in trtexec.",
        "Polygraphy compares element by element: --atol is our bound rtol x max|reference| (the largest "
        "reference magnitude of the validation cases), --rtol 0; cosine and per-row cosine, which our report "
        "also checks, are not checked there.",
    ]
    if uses_plugin:
        notes.insert(
            0,
            "trtexec --dynamicPlugins takes libroformer_trt_plugin.so (it calls getCreators); "
            "Polygraphy --plugins and trtexec --staticPlugins only dlopen, so they take "
            "libroformer_trt_plugin_static.so, which registers the creator at load time.",
        )
        notes.append(
            "ONNX Runtime cannot run the TensorRT-bound graph (RoformerRotary has no ONNX function), "
            "so the second Polygraphy command runs the plain export on the saved inputs."
        )
        if not static_plugin_lib:
            notes.append(
                "libroformer_trt_plugin_static.so was not built (no libnvinfer found at build time): "
                "build it on the TensorRT machine before running the Polygraphy command."
            )
    return notes


def render_markdown(cmds: Mapping) -> str:
    """The commands as a report.md section (no heading: the caller places it)."""
    lines = [
        "trtexec (build the engine from the same graph and time it):",
        "",
        "```sh",
        *cmds["trtexec"],
        "```",
        "",
        "Polygraphy (build and run in TensorRT saving inputs and outputs, then compare with ONNX Runtime):",
        "",
        "```sh",
        *cmds["polygraphy"],
        "```",
        "",
    ]
    lines += [f"- {n}" for n in cmds.get("notes", [])]
    return "\n".join(lines) + "\n"
