"""The flags of python -m export.build, in the groups a user reads them in (--help keeps this order)."""

from __future__ import annotations

from engines.tensorrt.flags import add_engine_flags
from export import memory
from export.cli.entry import Parser
from export.cli.flags import add_thresholds, add_trust_pickle
from export.inputs.numbers import float_arg, int_arg, size_arg
from export.passes.pooling import MODES
from export.passes.quantize.options import add_quant_flags


def build_parser(description: str, epilog: str) -> Parser:
    p = Parser(prog="python -m export.build", description=description, epilog=epilog)
    for add in (_input_flags, _graph_flags, _bench_flags, _accuracy_flags, _run_flags):
        add(p)
    return p


def _input_flags(p: Parser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="checkpoint of a supported family (export/families/): HF folder (sharded too), {config, state_dict} .pt, "
        "state_dict .pt/.bin/.safetensors (+ config.json beside it or --config)",
    )
    p.add_argument("--config", help="config.json to use instead of the checkpoint's own (the report says which)")
    add_trust_pickle(p)
    p.add_argument(
        "--task",
        dest="adapter_task",
        metavar="NAME|all|none",
        help="a checkpoint with task adapters (jina-embeddings-v3's LoRA): merge task NAME's adapter into the weights "
        "before export (one graph per task, no adapter at run time); all: one sub-folder per task; none: the base "
        "weights. Refused for a checkpoint without adapters; required (or none) for one with them",
    )
    p.add_argument("--out", help="output folder (default: build/<checkpoint stem>)")
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite files in --out that roformer-trt did not write "
        "but that this build writes (by default the build refuses, naming them)",
    )
    p.add_argument(
        "--max-len",
        type=int_arg(),
        help="longest sequence the graphs serve, at least 2 (default: the "
        "checkpoint's max_position_embeddings); may exceed it, rotary tables are a formula",
    )
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"], help="torch.onnx exporter")
    p.add_argument(
        "--attention",
        choices=["eager", "sdpa"],
        help="the attention kernel the model is exported with (default: the family's first; never flash-attention, "
        "which does not export); the report says which",
    )
    p.add_argument(
        "--opset", type=int_arg(), help="ONNX opset (dynamo 18-23, default 18; torchscript 17-20, default 17)"
    )
    p.add_argument(
        "--rope",
        default="plugin",
        choices=["plugin", "onnx", "none"],
        help="plugin: RoformerRotary nodes for TensorRT; onnx: standard RotaryEmbedding; none: as exported",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        help="fp32 | fp16 | bf16: the mixed-precision graph TensorRT "
        "builds from (matmuls low; LayerNorm, Softmax, residuals, rotary math fp32); int8 | fp8: Q/DQ "
        "graph (explicit quantization, calibrated; export/passes/quantize)",
    )


def _graph_flags(p: Parser) -> None:
    add_quant_flags(p)
    p.add_argument(
        "--pooling",
        default="auto",
        metavar="auto|none|MODE[+MODE]",
        help="add sentence_embedding [batch, width] to the TensorRT-bound graph, in fp32, by sentence-"
        "transformers' rules. auto: the checkpoint folder's own pipeline when it has modules.json (Pooling, "
        f"Dense, Normalize), else none; MODE: {', '.join(MODES)} (joined by + to concatenate); none: the "
        "outputs as exported. Base-model checkpoints only (export/passes/pooling/README.md)",
    )
    p.add_argument("--normalize", action="store_true", help="L2-normalise sentence_embedding (with a pooling)")
    p.add_argument(
        "--outputs",
        help="with a pooling: the TensorRT-bound graph's outputs, sentence_embedding (the "
        "engine drops last_hidden_state) or last_hidden_state,sentence_embedding (default: both)",
    )
    p.add_argument(
        "--truncate-dim",
        type=int_arg(),
        help="Matryoshka: keep the first N channels of sentence_embedding, before the normalisation; N must be "
        "one of the widths the checkpoint declares (config.json matryoshka_dimensions) when it declares them",
    )
    add_engine_flags(p)


def _bench_flags(p: Parser) -> None:
    p.add_argument(
        "--bench",
        action="store_true",
        help="after validation, benchmark engine / PyTorch / ORT "
        "into <out>/bench/ (on a machine without a GPU: ORT and PyTorch CPU)",
    )
    p.add_argument(
        "--bench-grid",
        help="BATCHxSEQ list for --bench, e.g. 1x128,8x512 (default: each profile's opt length at batch min and opt)",
    )
    p.add_argument("--bench-iters", type=int_arg(), default=20, help="timed runs per --bench point (+10%% warm-up)")
    p.add_argument("--bench-compile", action="store_true", help="--bench also times torch.compile(dynamic=True)")


def _accuracy_flags(p: Parser) -> None:
    p.add_argument(
        "--atol",
        type=float_arg(),
        help="override every atol of the thresholds (absolute alternative: "
        "max abs error <= atol also passes; default 0, off)",
    )
    p.add_argument(
        "--rtol",
        type=float_arg(),
        help="override every rtol of the thresholds (bound on scaled_error = "
        "max abs error / max |reference|; export/report/thresholds.py)",
    )
    add_thresholds(p)


def _run_flags(p: Parser) -> None:
    p.add_argument(
        "--max-memory",
        type=size_arg(),
        help="memory this build may use, e.g. 16G (default: what the machine, its cgroup "
        f"and ulimit -v leave; env {memory.ENV}); the build refuses to start when its estimate is larger",
    )
    p.add_argument("--skip-validation", action="store_true", help="export only (the report says not validated)")
    p.add_argument("--require-engine", action="store_true", help="exit 3 if the TensorRT engine stage cannot run here")
    p.add_argument("--json", action="store_true", help="print report.json to stdout at the end")
