"""What a stage hands back to export/build.py: its report section and everything else, nothing mutated."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from export.report.schema import ValidationCase
from export.validate import Graph

S = TypeVar("S")


@dataclass
class StageResult(Generic[S]):
    section: S  # the stage's report.json section
    artifacts: dict[str, str] = field(default_factory=dict)  # artifact key -> file name in the build folder
    graphs: Mapping[str, tuple[Graph, str]] = field(default_factory=dict)  # to validate: name -> (graph, precision)
    cases: list[ValidationCase] = field(default_factory=list)  # validation cases the stage graded itself (engines)
    failure: str | None = None  # a coverage or stage failure line for report.json "failure"
