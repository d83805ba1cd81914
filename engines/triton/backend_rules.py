"""Which request shapes each instance of a `tensorrt_plan` model takes, by the rules of Triton's TensorRT
backend: a model of those rules in plain Python, so a generated config.pbtxt can be checked on any host.

Read from triton-inference-server/tensorrt_backend at e2ef6d7 (nothing here runs Triton or TensorRT):
- Instances: an instance_group makes `count` instances per GPU (model_config.proto; Triton's own default is 1),
  each with the group's `profile` list. An empty list means profile 0 only ("default" -> index 0,
  src/instance_state.cc:2143-2144); a listed name must parse as an integer (src/tensorrt_utils.cc,
  GetProfileIndex) below the engine's profile count (src/model_state.cc:786-793). The backend makes one
  execution context per listed profile (src/instance_state.cc:2139-2163).
- Batches: the dynamic batcher merges requests only when their inputs have equal shapes
  (model_config.proto, allow_ragged_batch) and never past max_batch_size, so an instance sees inputs
  [b, s] (or [b, choices, s]) with 1 <= b <= max_batch_size, and any instance may get any request.
- Profile choice: with one listed profile the instance runs every request on it (GetMostOptimizedProfile,
  src/instance_state.cc:1841-1842) and SetBindingDimensions refuses a shape outside its min..max ("request
  specifies invalid shape for input", :4287-4297). With several it keeps the profiles whose min..max hold
  every input (EvaluateTensorRTContext, :1944-1971), takes the one nearest the request (:1843-1852), and
  fails the request when none holds it (:1853-1866, then the binding check above).
So: instance i accepts [b, s] iff b <= max_batch_size and one profile it lists holds b in its batch range
and s in its sequence range (the choices axis is fixed by every profile).
"""

from __future__ import annotations

from dataclasses import dataclass

from export.errors import UsageError


@dataclass(frozen=True)
class ProfileBox:
    """One optimization profile's accepted ranges (the min and max of report.json's profile rows)."""

    batch: tuple[int, int]
    sequence: tuple[int, int]

    def holds(self, batch: int, seq: int) -> bool:
        return self.batch[0] <= batch <= self.batch[1] and self.sequence[0] <= seq <= self.sequence[1]


@dataclass(frozen=True)
class Instance:
    name: str
    profiles: tuple[int, ...]  # the profile indices the backend gives this instance contexts for


def profile_boxes(rows: list[dict]) -> list[ProfileBox]:
    """report.json `profiles` rows ({"batch": [min, opt, max], "sequence": [min, opt, max]}) -> boxes."""
    return [
        ProfileBox((int(r["batch"][0]), int(r["batch"][2])), (int(r["sequence"][0]), int(r["sequence"][2])))
        for r in rows
    ]


def instances_for(cfg, n_profiles: int) -> list[Instance]:
    """The instances a ModelConfig makes on one GPU, each with the profiles it may use (module docstring)."""
    out = []
    for gi, group in enumerate(cfg.instance_group):
        names = list(group.profile) or ["0"]  # no profile listed: the backend uses profile 0 alone
        try:
            profiles = tuple(int(p) for p in names)
        except ValueError:
            raise UsageError(f"instance group {gi} lists profile {names}: each must be an integer index") from None
        if any(not 0 <= p < n_profiles for p in profiles):
            raise UsageError(f"instance group {gi} lists profiles {list(profiles)}; the engine has {n_profiles}")
        group_name = group.name or f"{cfg.name}_{gi}"
        out += [Instance(f"{group_name}_{k}", profiles) for k in range(max(group.count, 1))]
    return out


def accepts(instance: Instance, boxes: list[ProfileBox], batch: int, seq: int, max_batch: int) -> bool:
    """Whether `instance` runs a batch of `batch` sequences of `seq` tokens instead of failing it."""
    return 1 <= batch <= max_batch and any(boxes[p].holds(batch, seq) for p in instance.profiles)


def refused_shapes(cfg, boxes: list[ProfileBox], max_len: int) -> list[str]:
    """One line per instance that refuses some batch 1..max_batch_size x sequence 1..max_len, naming the
    first refused shape and how many there are; [] when every instance takes every such shape."""
    lines = []
    max_batch = max(cfg.max_batch_size, 1)
    for inst in instances_for(cfg, len(boxes)):
        refused = [(b, s) for s in range(1, max_len + 1) for b in _refused_batches(inst, boxes, s, max_batch)]
        if refused:
            b, s = refused[0]
            lines.append(
                f"{inst.name} (profiles {list(inst.profiles)}) refuses batch {b} x sequence {s} and "
                f"{len(refused) - 1} more of the {max_batch * max_len} shapes"
            )
    return lines


def _refused_batches(inst: Instance, boxes: list[ProfileBox], seq: int, max_batch: int) -> list[int]:
    """Batches 1..max_batch that `inst` refuses at `seq` tokens, from the profiles' ranges (not one by one)."""
    spans = sorted(boxes[p].batch for p in inst.profiles if boxes[p].sequence[0] <= seq <= boxes[p].sequence[1])
    refused: list[int] = []
    next_ok = 1
    for lo, hi in spans:
        refused += range(next_ok, min(lo, max_batch + 1))
        next_ok = max(next_ok, hi + 1)
    return refused + list(range(next_ok, max_batch + 1))
