"""C++ host reference (libroformer_rotary_host.so) vs export.reference.roformer_rotary_ref, through ctypes.

Runs in CI (plain C++, no GPU). Both sides round each fp32 product and the sum separately (the library is
built with -ffp-contract=off, numpy never fuses), and both cast with round-to-nearest-even, so every dtype
must match bit for bit: any difference is a bug, not noise.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from export.reference import bf16_round, roformer_rotary_ref, sincos_table
from plugins import locate
from tests.plugins.fixtures import plugin_build  # noqa: F401  (session fixture)

F32, F16, BF16 = 0, 1, 2  # RotaryDType codes (plugins/roformer_rotary/roformerRotaryShape.h)
I64 = ctypes.c_int64


@pytest.fixture(scope="module")
def host(plugin_build):  # noqa: F811
    lib = ctypes.CDLL(str(plugin_build.require(locate.HOST_LIB, "see the CMake log")))
    lib.roformer_rotary_host.restype = ctypes.c_int
    lib.roformer_rotary_host.argtypes = [
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ] + [I64] * 6
    lib.roformer_rotary_host_check.restype = ctypes.c_char_p
    lib.roformer_rotary_host_check.argtypes = [ctypes.c_int, ctypes.c_int] + [I64] * 6
    for fn in (
        "roformer_rotary_host_float_to_half",
        "roformer_rotary_host_float_to_bf16",
        "roformer_rotary_host_half_to_float",
    ):
        getattr(lib, fn).restype = None
        getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_void_p, I64]
    return lib


def run_host(lib, dtype_code: int, xs: list[np.ndarray], table: np.ndarray, rotary_dim: int) -> list[np.ndarray]:
    """Calls roformer_rotary_host on contiguous copies; returns the k outputs (same dtype as xs)."""
    b, h, s, dh = xs[0].shape
    xs = [np.ascontiguousarray(x) for x in xs]
    ys = [np.full_like(x, 0x5A5A if x.dtype == np.uint16 else np.nan) for x in xs]  # poison: every element written
    xp = (ctypes.c_void_p * len(xs))(*[x.ctypes.data for x in xs])
    yp = (ctypes.c_void_p * len(ys))(*[y.ctypes.data for y in ys])
    table = np.ascontiguousarray(table, dtype=np.float32)
    rc = lib.roformer_rotary_host(
        dtype_code, len(xs), xp, yp, table.ctypes.data, b, h, s, dh, rotary_dim, table.shape[0]
    )
    assert rc == 0, lib.roformer_rotary_host_check(dtype_code, len(xs), b, h, s, dh, rotary_dim, table.shape[0])
    return ys


def bf16_bits(x_f32: np.ndarray) -> np.ndarray:
    """float32 values already on the bf16 grid -> uint16 bit patterns."""
    return (np.ascontiguousarray(x_f32, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def make_inputs(rng, k, shape, dtype_code):
    """k tensors [B, H, S, Dh] with a spread of magnitudes: normal values, large ones (fp16 overflow to inf
    after rotation), tiny ones (fp16 subnormals), exact zeros and negative zeros."""
    xs = []
    for _ in range(k):
        x = rng.standard_normal(shape).astype(np.float32)
        flat = x.reshape(-1)
        n = flat.size
        idx = rng.permutation(n)
        q = max(n // 16, 1)
        # |x| up to the fp16 max (finite inputs): a rotated pair can exceed it and round to inf
        flat[idx[:q]] = (rng.uniform(3.0e4, 65504.0, q) * rng.choice([-1.0, 1.0], q)).astype(np.float32)
        flat[idx[q : 2 * q]] *= np.float32(1e-6)  # fp16 subnormal range
        flat[idx[2 * q : 2 * q + 1]] = 0.0
        flat[idx[2 * q + 1 : 2 * q + 2]] = -0.0
        if dtype_code == F16:
            xs.append(x.astype(np.float16))
        elif dtype_code == BF16:
            xs.append(bf16_round(x))  # float32 on the bf16 grid
        else:
            xs.append(x)
    return xs


# (B, H, S, Dh, R): S=1, S=217, H=5, Dh=2, Dh=6, 64, 128, partial rotation R < Dh.
SHAPES = [
    (1, 1, 1, 2, 2),
    (2, 5, 217, 64, 64),
    (1, 3, 7, 6, 6),
    (1, 2, 9, 6, 4),
    (2, 2, 33, 128, 128),
    (1, 5, 17, 128, 64),
    (3, 1, 1, 64, 2),
]


@pytest.mark.parametrize("dtype_code", [F32, F16, BF16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("b,h,s,dh,r", SHAPES, ids=lambda v: str(v))
def test_host_matches_numpy_reference_bitwise(host, dtype_code, k, b, h, s, dh, r):
    rng = np.random.default_rng(1234 + 7 * k + dh)
    table = sincos_table(s + 5, r)  # P > S: the kernel must use rows 0..S-1 only
    xs = make_inputs(rng, k, (b, h, s, dh), dtype_code)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = roformer_rotary_ref(xs, table, rotary_dim=r)  # fp32 math; fp16 cast by numpy (nearest even)
    if dtype_code == BF16:
        ref = [bf16_round(y) for y in ref]  # the reference computes in fp32; cast_T for bf16
        args = [bf16_bits(x) for x in xs]
    else:
        args = xs
    before = [a.copy() for a in args]
    got = run_host(host, dtype_code, args, table, r)
    if dtype_code == BF16:
        got = [bits_to_f32(g) for g in got]
    for i, (g, want) in enumerate(zip(got, ref, strict=True)):
        uint = np.uint16 if g.dtype == np.float16 else np.uint32
        diff = np.flatnonzero(g.view(uint) != want.view(uint))
        print(f"x_{i}: {diff.size} of {g.size} elements differ")
        assert diff.size == 0, (
            f"x_{i} first differing element {diff[:5]}: got {g.reshape(-1)[diff[:5]]}, "
            f"want {want.reshape(-1)[diff[:5]]}"
        )
    for a, a0 in zip(args, before, strict=True):
        assert np.array_equal(a.view(np.uint8), a0.view(np.uint8)), "the host reference wrote its input"


def test_passthrough_channels_are_bit_exact(host):
    """Channels R..Dh are copied, NaN payloads and -0.0 included (no round trip through a product)."""
    x = np.zeros((1, 1, 3, 8), dtype=np.float32)
    x[..., 4:] = np.array([np.nan, -0.0, np.inf, 1e-45], dtype=np.float32)
    x.view(np.uint32)[..., 4] = 0x7FC12345  # a NaN with a payload
    y = run_host(host, F32, [x], sincos_table(3, 4), 4)[0]
    assert np.array_equal(y[..., 4:].view(np.uint32), x[..., 4:].view(np.uint32))


@pytest.mark.parametrize(
    "dtype,k,shape_r_p,message",
    [
        (F32, 1, ((1, 1, 4, 8), 3, 4), "rotary_dim"),  # odd R
        (F32, 1, ((1, 1, 4, 8), 10, 4), "rotary_dim"),  # R > Dh
        (F32, 1, ((1, 1, 4, 8), 0, 4), "rotary_dim"),  # R = 0
        (F32, 1, ((1, 1, 9, 8), 8, 8), "exceeds"),  # S > P
        (F32, 1, ((1, 1, 4, 7), 6, 4), "Dh"),  # odd head size
        (F32, 0, ((1, 1, 4, 8), 8, 4), "k"),  # no tensor
        (F32, 5, ((1, 1, 4, 8), 8, 4), "k"),  # more than 4 tensors
        (7, 1, ((1, 1, 4, 8), 8, 4), "dtype"),  # unknown dtype code
        (F32, 1, ((-1, 1, 4, 8), 8, 4), ">= 0"),  # negative size
    ],
)
def test_bad_arguments_are_refused(host, dtype, k, shape_r_p, message):
    (b, h, s, dh), r, p = shape_r_p
    why = host.roformer_rotary_host_check(dtype, k, b, h, s, dh, r, p)
    assert why is not None and message in why.decode(), why
    x = np.zeros(max(b, 0) * h * s * dh + 1, dtype=np.float32)
    y = np.full_like(x, 7.0)
    ptrs = (ctypes.c_void_p * 5)(*([x.ctypes.data] * 5))
    outs = (ctypes.c_void_p * 5)(*([y.ctypes.data] * 5))
    table = np.zeros((max(p, 1), max(r, 1)), dtype=np.float32)
    assert host.roformer_rotary_host(dtype, k, ptrs, outs, table.ctypes.data, b, h, s, dh, r, p) == 1
    assert np.all(y == 7.0), "a refused call must not write its outputs"


def test_empty_batch_is_a_valid_no_op(host):
    assert host.roformer_rotary_host_check(F32, 2, 0, 12, 5, 64, 64, 8) is None
    assert host.roformer_rotary_host(F32, 2, None, None, None, 0, 12, 5, 64, 64, 8) == 0


def test_float_to_half_matches_numpy(host):
    """Software fp32 -> fp16 (nearest even, subnormals, overflow) on ~430k bit patterns spread over all 2^32."""
    f = np.arange(0, 2**32, 9973, dtype=np.uint64).astype(np.uint32).view(np.float32)
    extra = np.array(
        [
            65504.0,
            65519.996,
            65520.0,
            2.0**-24,
            2.0**-25,
            2.0**-25 * 1.0000001,
            3 * 2.0**-26,
            2.0**-14,
            2.0**-14 * (1 - 2.0**-12),
        ],
        dtype=np.float32,
    )
    f = np.concatenate([f, extra, -extra])
    out = np.empty(f.size, dtype=np.uint16)
    host.roformer_rotary_host_float_to_half(f.ctypes.data, out.ctypes.data, f.size)
    with np.errstate(over="ignore", invalid="ignore"):
        want = f.astype(np.float16).view(np.uint16)
    nan = np.isnan(f)
    assert np.array_equal(out[~nan], want[~nan])
    assert np.all(np.isnan(out[nan].view(np.float16)))


def test_half_to_float_is_exact_for_all_halves(host):
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    out = np.empty(h.size, dtype=np.float32)
    host.roformer_rotary_host_half_to_float(h.ctypes.data, out.ctypes.data, h.size)
    want = h.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(out[~nan].view(np.uint32), want[~nan].view(np.uint32))
    assert np.all(np.isnan(out[nan]))


def test_float_to_bf16_matches_reference_rounding(host):
    f = np.arange(0, 2**32, 9973, dtype=np.uint64).astype(np.uint32).view(np.float32)
    out = np.empty(f.size, dtype=np.uint16)
    host.roformer_rotary_host_float_to_bf16(f.ctypes.data, out.ctypes.data, f.size)
    want = bf16_round(f)
    nan = np.isnan(f)
    assert np.array_equal(bits_to_f32(out[~nan]).view(np.uint32), want[~nan].view(np.uint32))
    assert np.all(np.isnan(bits_to_f32(out[nan])))
