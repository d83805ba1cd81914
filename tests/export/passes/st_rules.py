"""sentence-transformers 6.3.0's pooling pipeline restated in numpy (float64), line by line after its source, for
the tests to hold export.reference and the graph against. Independent of export.reference on purpose: it
follows the library's own steps (flip/argmax for the last token, masked_fill for max, the legacy-flag
conversion), not our formulas.

Sources (sentence-transformers 6.3.0, PyPI wheel):
- sentence_transformers/sentence_transformer/modules/pooling.py: `_convert_legacy_pooling_kwargs`,
  `Pooling._forward_padded` (older releases: sentence_transformers/models/Pooling.py);
- sentence_transformers/base/modules/dense.py: `Dense.forward` (older: models/Dense.py);
- sentence_transformers/base/modules/normalize.py: `Normalize.forward` (older: models/Normalize.py);
- sentence_transformers/util/tensor.py `truncate_embeddings` and sentence_transformer/model.py `encode`: the
  truncation after the modules, then `normalize_embeddings`.
"""

from __future__ import annotations

import math

import numpy as np

LEGACY = {  # _LEGACY_POOLING_MODE_KWARGS, in its order
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def legacy_modes(config: dict) -> tuple[str, ...]:
    """_convert_legacy_pooling_kwargs: `pooling_mode` wins; else the flags set, in LEGACY order; none: mean."""
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        return (mode,) if isinstance(mode, str) else tuple(mode)
    return tuple(m for k, m in LEGACY.items() if config.get(k, False)) or ("mean",)


def pooling(token_embeddings: np.ndarray, attention_mask: np.ndarray, modes: tuple[str, ...]) -> np.ndarray:
    """Pooling._forward_padded (no prompt, no token_weights_sum), torch.cat(output_vectors, dim=-1)."""
    h = token_embeddings.astype(np.float64)
    bs, seq_len, hidden_dim = h.shape
    output_vectors = []
    for mode in modes:
        if mode == "cls":
            first_indices = attention_mask.astype(np.int32).argmax(axis=1)
            output_vectors.append(h[np.arange(bs), first_indices])
        elif mode == "max":
            mask = np.broadcast_to(attention_mask[..., None], h.shape).astype(np.float64)
            output_vectors.append(np.where(mask == 0, -np.inf, h).max(axis=1))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            mask = attention_mask[..., None].astype(np.float64)
            mean_sum = (h * mask).sum(axis=1)
            mean_mask = np.clip(mask.sum(axis=1), 1e-9, None)
            output_vectors.append(mean_sum / (mean_mask if mode == "mean" else np.sqrt(mean_mask)))
        elif mode == "weightedmean":
            mask = attention_mask[..., None].astype(np.float64)
            weights = np.arange(1, seq_len + 1, dtype=np.float64).reshape(1, -1, 1)
            pad_lengths = attention_mask.astype(np.int32).argmax(axis=1)
            weights = weights - pad_lengths.reshape(-1, 1, 1)
            weighted_mask = mask * weights
            output_vectors.append((h * weighted_mask).sum(axis=1) / np.clip(weighted_mask.sum(axis=1), 1e-9, None))
        elif mode == "lasttoken":
            flipped = attention_mask[:, ::-1]
            values, indices = flipped.max(axis=1), flipped.argmax(axis=1)  # torch max(1): first max of the flip
            indices = np.where(values == 0, seq_len - 1, indices)
            gather_indices = seq_len - indices - 1
            mask = np.broadcast_to(attention_mask[..., None], h.shape).astype(np.float64)
            output_vectors.append((h * mask)[np.arange(bs), gather_indices])
        else:
            raise ValueError(mode)
    return np.concatenate(output_vectors, axis=-1)


TORCH_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.Tanh": np.tanh,
    "torch.nn.modules.activation.ReLU": lambda x: np.maximum(x, 0),
    "torch.nn.modules.activation.Sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "torch.nn.modules.activation.SiLU": lambda x: x * (1 / (1 + np.exp(-x))),
    "torch.nn.modules.activation.GELU": lambda x: x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
}


def dense(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, activation_function: str) -> np.ndarray:
    """Dense.forward: activation_function(linear(x)), linear = x @ weight.T + bias (nn.Linear)."""
    y = x @ weight.astype(np.float64).T + (0 if bias is None else bias.astype(np.float64))
    return TORCH_ACTIVATIONS[activation_function](y)


def normalize(x: np.ndarray) -> np.ndarray:
    """Normalize.forward: F.normalize(x, p=2, dim=-1) = x / max(||x||, eps=1e-12)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def encode(
    hidden: np.ndarray,
    mask: np.ndarray,
    modes: tuple[str, ...],
    denses: tuple = (),
    normalize_module: bool = False,
    truncate_dim: int | None = None,
    normalize_embeddings: bool = False,
) -> np.ndarray:
    """SentenceTransformer.encode on the Transformer's token embeddings: the modules in order (Pooling,
    Dense..., Normalize), then truncate_embeddings, then normalize_embeddings."""
    x = pooling(hidden, mask, modes)
    for weight, bias, activation in denses:
        x = dense(x, weight, bias, activation)
    if normalize_module:
        x = normalize(x)
    if truncate_dim is not None:
        x = x[..., :truncate_dim]
    return normalize(x) if normalize_embeddings else x
