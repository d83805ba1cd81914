"""The rotary pass on tiny random models of the six HF rotary encoder families, as torch's dynamo exporter writes
them at opset 23 (fused RotaryEmbedding with batch-1 caches) and opset 18 (decomposed rotate_half):

    python scripts/check_rotary_families.py [--families modernbert,gte,...]

For each family x opset: the RotaryEmbedding and Cos nodes of the raw export, whether ONNX Runtime runs the raw
graph at batch 3, and for --rope onnx and --rope plugin (lowered to its ONNX function on the CPU) the sites
found / rewritten, the nodes written and the largest error against HF fp32 at batch 3 with right padding at
S = 61 (padded rows excluded), relative to the largest |output|. Writes rotary_families_<date>.md to --out
(default build/scripts/check_rotary_families/; --update-results: scripts/results/families/), graphs to --work.
Tiny configs (2 layers, hidden 32, head size 8 or 16) built with each family's HF config class; each layer's
rotary is split halves over the head size with the config's theta, as the family files declare it.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from script_outputs import add_output_flags  # noqa: E402

BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=128, pad_token_id=0)  # fmt: skip
FAMILIES = {  # model_type: (config class, model class, config overrides)
    "modernbert": (
        "ModernBertConfig",
        "ModernBertModel",
        dict(
            global_attn_every_n_layers=2,
            local_attention=16,
            bos_token_id=1,
            eos_token_id=2,
            cls_token_id=1,
            sep_token_id=2,
        ),
    ),  # fmt: skip
    "gte": ("GteConfig", "GteModel", {}),
    "nomic_bert": ("NomicBertConfig", "NomicBertModel", dict(head_dim=16)),
    "esm": ("EsmConfig", "EsmModel", dict(position_embedding_type="rotary", mask_token_id=1)),
    "eurobert": ("EuroBertConfig", "EuroBertModel", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8)),
    "jina_embeddings_v3": ("JinaEmbeddingsV3Config", "JinaEmbeddingsV3Model", {}),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/check_rotary_families.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--families", default=",".join(FAMILIES), help="comma list of model types")
    add_output_flags(p, "check_rotary_families", "families", work=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from export.stages.bench import host_description

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.families.split(","):
        rows += check_family(name, work)
    date = time.strftime("%Y-%m-%d")
    md = [f"# The rotary pass on the six families' exports ({date}, {host_description()})", "",
          "| family | opset | RotaryEmbedding | Cos | raw at batch 3 | mode | found | rewritten | nodes | "
          "coverage | max err / max abs ref |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    md += [" | ".join(["", *map(str, r), ""]).strip() for r in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rotary_families_{date}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


class _LastHidden(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def layer_rotary(config) -> list:
    from export.families.spec import SPLIT_HALVES, LayerRotary, RotaryTable

    heads_q = config.num_attention_heads
    heads_k = getattr(config, "num_key_value_heads", None) or heads_q
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads_q
    params = getattr(config, "rope_parameters", None) or {}
    kinds = getattr(config, "layer_types", None) or ["default"] * config.num_hidden_layers
    theta = {k: (params.get(k) or params).get("rope_theta", getattr(config, "rope_theta", 10000.0)) for k in kinds}
    heads = (("query", heads_q), ("key", heads_k))
    return [LayerRotary(SPLIT_HALVES, head_dim, RotaryTable(k, head_dim, float(theta[k])), heads) for k in kinds]


def check_family(name: str, work: Path) -> list[tuple]:
    import transformers

    from export.passes.lowering import with_rotary_function
    from export.passes.rotary import fuse_rotary
    from export.validate import ort_session

    config_cls, model_cls, extra = FAMILIES[name]
    config = getattr(transformers, config_cls)(**(BASE | extra))
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 64, (3, 61)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 40:], mask[2, 7:] = 0, 0
    ids[mask == 0] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
    rows, kept = [], mask.astype(bool)
    for opset in (23, 18):
        path = work / f"{name}_{opset}.onnx"
        export(model, path, opset)
        raw = onnx.load(str(path))
        ops = [n.op_type for n in raw.graph.node]
        try:
            ort_session(raw).run(None, feeds)
            raw_runs = "runs"
        except Exception as e:  # noqa: BLE001 - ORT's own error types; the table says refused
            raw_runs = f"refused ({type(e).__name__})"
        for mode in ("onnx", "plugin"):
            n = config.num_hidden_layers
            new, rep = fuse_rotary(raw, mode, expected=2 * n, expected_nodes=n, max_len=96, rotary=layer_rotary(config))
            got = ort_session(with_rotary_function(new) if mode == "plugin" else new).run(None, feeds)[0]
            err = float(np.abs(got - ref)[kept].max() / np.abs(ref[kept]).max())
            rows.append((name, opset, ops.count("RotaryEmbedding"), ops.count("Cos"), raw_runs, mode, rep.found,
                         rep.rewritten, rep.nodes, rep.coverage_error() or "ok", f"{err:.2e}"))  # fmt: skip
            print(*rows[-1], file=sys.stderr)
    return rows


def export(model, path: Path, opset: int) -> None:
    ids = torch.randint(3, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    b, s = torch.export.Dim("batch"), torch.export.Dim("sequence", max=128)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LastHidden(model), (ids, torch.ones_like(ids)), str(path), dynamo=True, opset_version=opset,
            input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
            dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}), external_data=False, verbose=False,
        )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
