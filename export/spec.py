"""What an export looks like per task head: I/O names, dynamic axis names, output names.

Read by the exporter, the validator, the engine profile builder and the Triton generator, so one
spelling of every name lives here.
"""

from __future__ import annotations

from dataclasses import dataclass

BATCH, SEQUENCE, CHOICES = "batch", "sequence", "choices"
DEFAULT_CHOICES = 2  # choices per example of a multiple-choice head when export.build gets no --choices
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

# task -> (HF class name, output names in the order the HF model returns them)
TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "model": ("RoFormerModel", ("last_hidden_state",)),
    "masked-lm": ("RoFormerForMaskedLM", ("logits",)),
    "sequence-classification": ("RoFormerForSequenceClassification", ("logits",)),
    "token-classification": ("RoFormerForTokenClassification", ("logits",)),
    "question-answering": ("RoFormerForQuestionAnswering", ("start_logits", "end_logits")),
    "multiple-choice": ("RoFormerForMultipleChoice", ("logits",)),
}
ARCHITECTURE_TO_TASK = {arch: task for task, (arch, _) in TASKS.items()}


@dataclass(frozen=True)
class ExportSpec:
    task: str

    @property
    def output_names(self) -> tuple[str, ...]:
        return TASKS[self.task][1]

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
        axes = {n: dict(self.input_axes) for n in INPUT_NAMES}
        axes.update({n: self.output_axes(n) for n in self.output_names})
        return axes
