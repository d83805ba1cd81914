"""CUDA kernel (libroformer_rotary_kernels.so, via ctypes on PyTorch CUDA tensors) vs the numpy reference.

Run from the source tree: `PYTHONPATH=. python -m pytest -m gpu tests/gpu`. Skipped, with the reason, where
torch has no CUDA device or cmake/nvcc are missing. The kernel computes with __fmul_rn/__fadd_rn (no FMA),
so every dtype must match export.reference.roformer_rotary_ref bit for bit, in both layouts (interleaved 1
and 0) and with tensors of their own head counts (grouped-query attention).
Libraries: $ROFORMER_TRT_PLUGIN_DIR if set, else built once into a session temp folder for this GPU's arch.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")

from export.reference import bf16_round, roformer_rotary_ref, sincos_table  # noqa: E402
from plugins import build as plugin_build_cli  # noqa: E402
from plugins import identity, locate  # noqa: E402
from tests.plugins.fixtures import bind_launch  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device visible to torch (CPU-only build or no GPU); these tests need one",
    ),
]

F32, F16, BF16 = 0, 1, 2  # RotaryDType codes
CUDA_ERROR_INVALID_VALUE = 1
I64 = ctypes.c_int64
DTYPES = {torch.float32: F32, torch.float16: F16, torch.bfloat16: BF16}


@pytest.fixture(scope="session")
def kernels(tmp_path_factory):
    prebuilt = os.environ.get(locate.ENV_DIR)
    if prebuilt:
        path = locate.find_kernel_library()
        if path is None:
            pytest.skip(f"${locate.ENV_DIR}={prebuilt} holds no {locate.KERNEL_LIB}")
    else:
        missing = plugin_build_cli.missing_tools()
        if missing:
            pytest.skip(f"cannot build the kernels: {', '.join(missing)} not installed")
        major, minor = torch.cuda.get_device_capability()
        build_dir = tmp_path_factory.mktemp("plugins-build")
        cmd = [
            sys.executable,
            "-m",
            "plugins.build",
            "--build-dir",
            str(build_dir),
            "--archs",
            f"{major}{minor}",
            "-j",
            str(os.cpu_count() or 2),
        ]
        proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"kernel build failed:\n{(proc.stderr + proc.stdout)[-6000:]}")
        path = build_dir / locate.KERNEL_LIB
    return bind_launch(ctypes.CDLL(str(path)))


def launch(lib, xs: list, ys: list, table, rotary_dim: int, interleaved: int = 1) -> int:
    """roformer_rotary_launch on the current stream; returns the cudaError_t code (after a sync on success)."""
    b, _, s, dh = xs[0].shape
    heads = (I64 * len(xs))(*[x.shape[1] for x in xs])
    xp = (ctypes.c_void_p * len(xs))(*[x.data_ptr() for x in xs])
    yp = (ctypes.c_void_p * len(ys))(*[y.data_ptr() for y in ys])
    stream = torch.cuda.current_stream().cuda_stream
    rc = lib.roformer_rotary_launch(
        DTYPES[xs[0].dtype], interleaved, len(xs), xp, yp, table.data_ptr(), b, heads, s, dh, rotary_dim,
        table.shape[0], stream,
    )  # fmt: skip
    torch.cuda.synchronize()
    return rc


def reference(xs, table_np, rotary_dim, interleaved=1) -> list[np.ndarray]:
    """numpy reference in the tensors' dtype; bf16 as float32 on the bf16 grid."""
    if xs[0].dtype == torch.bfloat16:
        f32 = [x.float().cpu().numpy() for x in xs]
        return [bf16_round(y) for y in roformer_rotary_ref(f32, table_np, rotary_dim, interleaved)]
    with np.errstate(over="ignore"):
        return roformer_rotary_ref([x.cpu().numpy() for x in xs], table_np, rotary_dim, interleaved)


def as_bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16 if a.dtype == np.float16 else np.uint32)


def check(lib, xs, rotary_dim, p_extra=3, interleaved=1):
    """Runs the kernel on xs, asserts bitwise equality with the reference and that xs were not written."""
    s = xs[0].shape[2]
    table_np = sincos_table(s + p_extra, rotary_dim)
    table = torch.from_numpy(table_np).cuda()
    before = [x.clone() for x in xs]
    ys = [torch.full_like(x, float("nan")) for x in xs]  # poison: every element must be written
    assert launch(lib, xs, ys, table, rotary_dim, interleaved) == 0
    for i, (x, x0) in enumerate(zip(xs, before, strict=True)):
        assert torch.equal(
            x.view(torch.uint8) if x.dtype != torch.float32 else x.view(torch.int32),
            x0.view(torch.uint8) if x0.dtype != torch.float32 else x0.view(torch.int32),
        ), f"x_{i} was modified"
    for i, (y, want) in enumerate(zip(ys, reference(xs, table_np, rotary_dim, interleaved), strict=True)):
        got = y.float().cpu().numpy() if y.dtype == torch.bfloat16 else y.cpu().numpy()
        bad = np.flatnonzero(as_bits(got) != as_bits(want))
        print(f"y_{i} {tuple(y.shape)} {y.dtype}: {bad.size} differing elements")
        assert bad.size == 0, (
            f"y_{i} first bad {bad[:5]}: got {got.reshape(-1)[bad[:5]]}, want {want.reshape(-1)[bad[:5]]}"
        )


# (B, H, S, Dh, R). Dh=64/128 take 16-byte vectors, 68 and 12 8-byte ones (fp16/bf16), 6 and 2 4-byte pairs;
# split halves also need R/2 a multiple of the vector (R=8: 8 bytes, R=6 and R=10: 4 bytes or elements).
SHAPES = [
    (1, 1, 1, 2, 2),
    (2, 12, 217, 64, 64),
    (3, 5, 113, 128, 128),
    (1, 5, 17, 128, 64),
    (2, 3, 31, 6, 6),
    (1, 2, 9, 6, 4),
    (2, 4, 19, 68, 68),
    (1, 3, 50, 12, 8),
    (8, 12, 1, 64, 64),
    (2, 3, 23, 64, 8),
    (1, 2, 7, 10, 10),
]


@pytest.mark.parametrize("interleaved", identity.INTERLEAVED_ALLOWED, ids=lambda v: f"interleaved={v}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("b,h,s,dh,r", SHAPES, ids=str)
def test_kernel_matches_reference(kernels, interleaved, dtype, k, b, h, s, dh, r):
    torch.manual_seed(0)
    xs = [torch.randn(b, h, s, dh, device="cuda", dtype=torch.float32).mul_(4.0).to(dtype) for _ in range(k)]
    check(kernels, xs, r, interleaved=interleaved)


@pytest.mark.parametrize("interleaved", identity.INTERLEAVED_ALLOWED, ids=lambda v: f"interleaved={v}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("heads", [(12, 4), (12, 4, 4), (8, 1), (2, 6), (4, 0)], ids=str)
def test_each_tensor_has_its_own_head_count(kernels, interleaved, dtype, heads):
    """Grouped-query attention: K (and V) with fewer heads than Q, one launch; and the converse."""
    torch.manual_seed(3)
    xs = [torch.randn(2, h, 37, 64, device="cuda").mul_(4.0).to(dtype) for h in heads]
    check(kernels, xs, 64, interleaved=interleaved)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("interleaved", identity.INTERLEAVED_ALLOWED, ids=lambda v: f"interleaved={v}")
def test_misaligned_pointers_take_the_element_path(kernels, dtype, interleaved):
    """Tensors starting one element into an allocation: not even pair-aligned, so the scalar-pair path runs."""
    torch.manual_seed(1)
    b, h, s, dh = 2, 3, 37, 64
    n = b * h * s * dh
    xs = [torch.randn(n + 1, device="cuda").to(dtype)[1:].view(b, h, s, dh) for _ in range(2)]
    assert all(x.data_ptr() % (2 * x.element_size()) != 0 for x in xs)
    check(kernels, xs, 64, interleaved=interleaved)


def test_large_fp16_values_overflow_like_the_reference(kernels):
    torch.manual_seed(2)
    x = (torch.rand(2, 2, 40, 64, device="cuda") * 2 - 1).mul_(65504.0).half()
    check(kernels, [x], 64)


def test_sequence_longer_than_table_is_refused(kernels):
    x = torch.randn(1, 2, 10, 64, device="cuda", dtype=torch.float16)
    y = torch.zeros_like(x)
    table = torch.from_numpy(sincos_table(8, 64)).cuda()  # P = 8 < S = 10
    assert launch(kernels, [x], [y], table, 64) == CUDA_ERROR_INVALID_VALUE
    assert torch.count_nonzero(y) == 0, "a refused launch wrote its output"


def test_odd_rotary_dim_is_refused(kernels):
    x = torch.randn(1, 1, 4, 8, device="cuda")
    table = torch.from_numpy(sincos_table(4, 6)).cuda()
    assert launch(kernels, [x], [torch.empty_like(x)], table, 5) == CUDA_ERROR_INVALID_VALUE


@pytest.mark.parametrize("interleaved", [2, -1])
def test_unknown_layout_is_refused(kernels, interleaved):
    x = torch.randn(1, 1, 4, 8, device="cuda")
    y = torch.zeros_like(x)
    table = torch.from_numpy(sincos_table(4, 8)).cuda()
    assert launch(kernels, [x], [y], table, 8, interleaved) == CUDA_ERROR_INVALID_VALUE
    assert torch.count_nonzero(y) == 0, "a refused launch wrote its output"


def test_more_than_2g_elements_uses_64_bit_indices(kernels):
    """B*H*S*Dh > 2^31: the last rows are right only with 64-bit index math. Checks the first and last rows."""
    need = 2 * (2**31 + 2**20) * 2 + (1 << 30)  # x and y in fp16, plus headroom
    if torch.cuda.mem_get_info()[0] < need:
        pytest.skip(f"needs about {need / 2**30:.1f} GiB of free GPU memory")
    b, h, s, dh = 1, 16, 2**21 + 8, 64  # 2^31 + 8*16*64 elements
    x = torch.empty(b, h, s, dh, device="cuda", dtype=torch.float16)
    x.view(-1)[: 2**20].normal_()
    x.view(-1)[-(2**20) :].normal_()
    table_np = sincos_table(s, dh)
    table = torch.from_numpy(table_np).cuda()
    y = torch.empty_like(x)
    assert launch(kernels, [x], [y], table, dh) == 0
    rows = 2**20 // dh  # rows at each end that were initialised
    for part in (slice(0, rows), slice(s - rows, s)):
        xs = x[:, -1:, part] if part.start else x[:, :1, part]
        ys = y[:, -1:, part] if part.start else y[:, :1, part]
        want = roformer_rotary_ref([xs.cpu().numpy()], table_np[part])[0]  # table row 0 = position part.start
        assert np.array_equal(ys.cpu().numpy().view(np.uint16), want.view(np.uint16))
