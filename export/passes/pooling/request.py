"""What `export.build --pooling --normalize --outputs --truncate-dim` asks for, and the Pooling it comes to once
the checkpoint is known.

In:  the flags (`PoolingRequest.check`, before anything is read), then the checkpoint path, its hidden size and
     task (`resolve`).
Out: `Resolved`: the Pooling to build into the graph (None: outputs as exported) and where it came from
     (report.json `pooling.source`).
`--pooling auto` (the default): the checkpoint folder's own sentence-transformers pipeline when it has
`modules.json` (export.checkpoint.sentence_transformers), else none. A mode (`mean`, `cls+mean`, ...) builds that
mode alone. `--normalize`, `--outputs` and `--truncate-dim` apply on top of either and are named in the source.
`--truncate-dim N` (Matryoshka) keeps the first N channels before the normalisation: refused for N < 1, for N
above the embedding's width, and for N outside the widths the checkpoint declares when it declares them
(config.json `matryoshka_dimensions`); a folder's own `truncate_dim` default is checked the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from export.checkpoint.sentence_transformers import ST_CONFIG, has_pipeline, matryoshka_widths, read_pipeline
from export.errors import UsageError
from export.passes.pooling.spec import Pooling, check_task, parse_pooling

AUTO = "auto"


@dataclass(frozen=True)
class PoolingRequest:
    """The pooling flags, checked on their own (UsageError for a contradiction)."""

    mode: str  # auto | none | a mode or modes joined by "+"
    normalize: bool = False
    outputs: str | None = None
    truncate_dim: int | None = None

    @classmethod
    def check(
        cls, mode: str, normalize: bool, outputs: str | None, truncate_dim: int | None, model: str | Path
    ) -> PoolingRequest:
        """The flags for the checkpoint at `model`, refused before anything is read where they contradict."""
        if truncate_dim is not None and truncate_dim < 1:
            raise UsageError(f"--truncate-dim {truncate_dim} must be at least 1")
        request = cls(mode, normalize, outputs, truncate_dim)
        if mode == AUTO and not has_pipeline(Path(model)):
            if request.flags():
                raise UsageError(
                    f"{request.flags()[0]} applies to a pooled output, and {model} has no sentence-transformers "
                    "pipeline (modules.json) for --pooling auto to build; add --pooling mean (or another mode), "
                    f"or drop {request.flags()[0]}"
                )
            request = cls("none")  # auto without a pipeline: the outputs as exported
        parse_pooling("mean" if request.mode == AUTO else request.mode, normalize, outputs, truncate_dim)
        return request

    def flags(self) -> list[str]:
        """The flags applied on top of the pipeline, as typed."""
        out = ["--normalize"] if self.normalize else []
        out += ["--outputs", self.outputs] if self.outputs is not None else []
        return out + (["--truncate-dim", str(self.truncate_dim)] if self.truncate_dim is not None else [])


@dataclass(frozen=True)
class Resolved:
    pooling: Pooling | None
    source: dict | None = None  # report.json pooling.source
    matryoshka: tuple[int, ...] | None = None  # the widths the checkpoint declares (() any, None unsaid)


def resolve(request: PoolingRequest, model: str | Path, hidden: int, task: str) -> Resolved:
    """The Pooling `request` comes to for the checkpoint at `model` (its encoder `hidden` wide, head `task`)."""
    folder = Path(model)
    pooling: Pooling | None
    source: dict[str, object]  # report.json pooling.source
    if request.mode == AUTO and has_pipeline(folder):
        pipeline = read_pipeline(folder, hidden)
        pooling = _with_flags(pipeline.pooling, request)
        source = {"kind": "sentence-transformers", "folder": str(folder), "files": pipeline.files}
        declared, origin = pipeline.matryoshka, "--truncate-dim"
        if request.truncate_dim is None and pipeline.pooling.truncate_dim is not None:
            origin = f"{folder / ST_CONFIG} truncate_dim"  # the folder's own default, checked like the flag
    else:
        pooling = parse_pooling(request.mode, *_rest(request))  # check() made auto without a pipeline none
        if pooling is None:
            return Resolved(None)
        source = {"kind": "flags", "folder": None, "files": {}}
        declared, origin = (matryoshka_widths(folder) if folder.is_dir() else None), "--truncate-dim"
    check_task(pooling, task)
    pooling.check_widths(hidden)
    _check_declared(pooling.truncate_dim, declared, origin, folder)
    return Resolved(pooling, {**source, "flags": request.flags()}, declared)


def _rest(request: PoolingRequest) -> tuple:
    return request.normalize, request.outputs, request.truncate_dim


def _with_flags(pooling: Pooling, request: PoolingRequest) -> Pooling:
    """The folder's pipeline with --normalize, --outputs and --truncate-dim applied on top."""
    flagged = parse_pooling(pooling.mode, *_rest(request))
    assert flagged is not None  # a mode, not "none"
    truncate = request.truncate_dim if request.truncate_dim is not None else pooling.truncate_dim
    return dataclasses.replace(
        pooling,
        normalize=pooling.normalize or request.normalize,
        keep_hidden=flagged.keep_hidden,
        truncate_dim=truncate,
    )


def _check_declared(truncate: int | None, declared: tuple[int, ...] | None, origin: str, folder: Path) -> None:
    if truncate is not None and declared and truncate not in declared:
        raise UsageError(
            f"{origin} {truncate} is not one of the widths {folder / 'config.json'} declares "
            f"(matryoshka_dimensions {', '.join(map(str, declared))}); pass --truncate-dim with one of them"
        )
