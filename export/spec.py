"""What an export looks like per task head: I/O names, dynamic axis names, output names.

Read by the exporter, the validator, the engine profile builder and the Triton generator, so one
spelling of every name lives here.
"""

from __future__ import annotations

from dataclasses import dataclass

BATCH, SEQUENCE, CHOICES = "batch", "sequence", "choices"
DEFAULT_CHOICES = 2  # choices per example of a multiple-choice head when export.build gets no --choices

# task -> output names in the order the HF model returns them; the same for every family (which transformers
# class makes each task is the family's: export/families/<name>.py `heads`)
TASKS: dict[str, tuple[str, ...]] = {
    "model": ("last_hidden_state",),
    "masked-lm": ("logits",),
    "sequence-classification": ("logits",),
    "token-classification": ("logits",),
    "question-answering": ("start_logits", "end_logits"),
    "multiple-choice": ("logits",),
}


@dataclass(frozen=True)
class ExportSpec:
    task: str
    inputs: tuple[str, ...] = ()  # the graph's inputs, the family's (`Family.inputs`); () where only outputs matter

    @property
    def output_names(self) -> tuple[str, ...]:
        return TASKS[self.task]

    @property
    def input_axes(self) -> dict[int, str]:
        if self.task == "multiple-choice":
            return {0: BATCH, 1: CHOICES, 2: SEQUENCE}  # [batch, choices, sequence]
        return {0: BATCH, 1: SEQUENCE}

    def output_axes(self, name: str) -> dict[int, str]:
        """Dynamic axes of each output; the rest are static (hidden, vocab, labels)."""
        if self.task in ("model", "masked-lm", "token-classification", "question-answering"):
            return {0: BATCH, 1: SEQUENCE}
        return {0: BATCH}  # [batch, labels] or [batch, choices]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {n: dict(self.input_axes) for n in self.inputs}
        axes.update({n: self.output_axes(n) for n in self.output_names})
        return axes
