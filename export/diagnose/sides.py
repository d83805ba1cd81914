"""The two sides a diagnosis compares: an ONNX graph (landmarks located in its structure, tensors exposed in
ONNX Runtime) or the PyTorch model (landmarks tapped by hooks). Both answer `keys()` (what they can show)
and `fetch(keys, feeds)` -> {key: [arrays]} for a group of keys, one run per call.

A key is (stage, layer) for the embeddings and the layers' landmarks, ("head", output name) for outputs
after the last layer (export/diagnose/structure.py names the stages).
"""

from __future__ import annotations

import numpy as np
import onnx

from export.diagnose.expose import run_exposed, structure_of
from export.diagnose.locate import locate
from export.diagnose.structure import Key, Landmark, Structure, key_layer
from export.diagnose.taps import capture, head_outputs
from export.families.registry import family_of_model


def landmark_key(m: Landmark) -> Key:
    return ("head", m.tensors[0]) if m.stage == "head" else (m.stage, m.layer)


class OnnxSide:
    """An ONNX graph: path, export.validate.OnnxFile, or an in-memory ModelProto with its weights."""

    def __init__(self, graph, label: str = "graph"):
        self.graph, self.label = graph, label
        self.model: onnx.ModelProto = structure_of(graph)
        self.structure: Structure = locate(self.model)
        self.landmarks = {landmark_key(m): m for m in self.structure.landmarks}

    def keys(self) -> list[Key]:
        return list(self.landmarks)

    def fetch(self, keys: list[Key], feeds: dict[str, np.ndarray]) -> dict[Key, list[np.ndarray]]:
        names = list(dict.fromkeys(t for k in keys for t in self.landmarks[k].tensors))
        values = self.tensors(names, feeds)
        return {k: [values[t] for t in self.landmarks[k].tensors] for k in keys}

    def tensors(self, names: list[str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_exposed(self.graph, names, feeds, structure=self.model)

    def nodes(self, key: Key) -> list[str]:
        return list(dict.fromkeys(self.landmarks[key].nodes))

    @property
    def layers(self) -> int:
        return self.structure.layers


class TorchSide:
    """The HF model in fp32 (the reference of export.build's validation)."""

    def __init__(self, model, task: str, label: str = "pytorch"):
        self.model, self.task, self.label = model, task, label
        self.family = family_of_model(model)
        self.n_layers = self.family.facts(model.config).layers

    def keys(self) -> list[Key]:
        stages = ("attention_input", "rotary_output", "attention_output", "ffn_output", "layer_output")
        heads: list[Key] = [("head", n) for n in head_outputs(self.family, self.task)]
        per_layer: list[Key] = [(s, k) for k in range(self.n_layers) for s in stages]
        return [("embeddings", None), *per_layer, *heads]

    def fetch(self, keys: list[Key], feeds: dict[str, np.ndarray]) -> dict[Key, list[np.ndarray]]:
        layers = {layer for k in keys if (layer := key_layer(k)) is not None}
        found = capture(
            self.model,
            self.task,
            feeds,
            layers,
            embeddings=("embeddings", None) in keys,
            head=any(k[0] == "head" for k in keys),
        )
        return {k: found[k] for k in keys if k in found}

    def nodes(self, key: Key) -> list[str]:
        return []

    @property
    def layers(self) -> int:
        return self.n_layers
