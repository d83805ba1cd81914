"""C++ host reference (libroformer_rotary_host.so) vs export.reference.roformer_rotary_ref, through ctypes.

Runs in CI (plain C++, no GPU). Both sides round each fp32 product and the sum separately (the library is
built with -ffp-contract=off, numpy never fuses), and both cast with round-to-nearest-even, so every dtype
must match bit for bit: any difference is a bug, not noise. Both layouts (interleaved 1 and 0), and tensors
with their own head counts (grouped-query attention).
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from export.reference import bf16_round, roformer_rotary_ref, sincos_table
from plugins import identity, locate
from tests.plugins.fixtures import plugin_build  # noqa: F401  (session fixture)

F32, F16, BF16 = 0, 1, 2  # RotaryDType codes (plugins/roformer_rotary/roformerRotaryShape.h)
I64 = ctypes.c_int64
LAYOUTS = identity.INTERLEAVED_ALLOWED


def heads_array(heads) -> ctypes.Array:
    return (I64 * max(len(heads), 1))(*heads)


@pytest.fixture(scope="module")
def host(plugin_build):  # noqa: F811
    lib = ctypes.CDLL(str(plugin_build.require(locate.HOST_LIB, "see the CMake log")))
    # (dtype, interleaved, k, x, y, sincos, B, H[k], S, Dh, R, P)
    lib.roformer_rotary_host.restype = ctypes.c_int
    lib.roformer_rotary_host.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 3 + [I64, ctypes.c_void_p] + [I64] * 4
    lib.roformer_rotary_host_check.restype = ctypes.c_char_p
    lib.roformer_rotary_host_check.argtypes = [ctypes.c_int] * 3 + [I64, ctypes.c_void_p] + [I64] * 4
    for fn in (
        "roformer_rotary_host_float_to_half",
        "roformer_rotary_host_float_to_bf16",
        "roformer_rotary_host_half_to_float",
    ):
        getattr(lib, fn).restype = None
        getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_void_p, I64]
    return lib


def run_host(
    lib, dtype_code: int, xs: list[np.ndarray], table: np.ndarray, rotary_dim: int, interleaved: int = 1
) -> list[np.ndarray]:
    """Calls roformer_rotary_host on contiguous copies; returns the k outputs (same dtype as xs)."""
    b, _, s, dh = xs[0].shape
    heads = heads_array([x.shape[1] for x in xs])
    xs = [np.ascontiguousarray(x) for x in xs]
    ys = [np.full_like(x, 0x5A5A if x.dtype == np.uint16 else np.nan) for x in xs]  # poison: every element written
    xp = (ctypes.c_void_p * len(xs))(*[x.ctypes.data for x in xs])
    yp = (ctypes.c_void_p * len(ys))(*[y.ctypes.data for y in ys])
    table = np.ascontiguousarray(table, dtype=np.float32)
    args = (b, heads, s, dh, rotary_dim, table.shape[0])
    rc = lib.roformer_rotary_host(dtype_code, interleaved, len(xs), xp, yp, table.ctypes.data, *args)
    assert rc == 0, lib.roformer_rotary_host_check(dtype_code, interleaved, len(xs), *args)
    return ys


def bf16_bits(x_f32: np.ndarray) -> np.ndarray:
    """float32 values already on the bf16 grid -> uint16 bit patterns."""
    return (np.ascontiguousarray(x_f32, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def make_inputs(rng, shapes, dtype_code):
    """One tensor [B, H_i, S, Dh] per shape with a spread of magnitudes: normal values, large ones (fp16 overflow
    to inf after rotation), tiny ones (fp16 subnormals), exact zeros and negative zeros."""
    xs = []
    for shape in shapes:
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


# (B, H, H_kv, S, Dh, R): x_0 has H heads, x_1.. H_kv (grouped-query attention when H_kv < H).
# S=1, S=217, H=5, Dh=2, Dh=6, 64, 128, partial rotation R < Dh (R/2 odd too), GQA 4:2, 3:1 and 1:3.
SHAPES = [
    (1, 1, 1, 1, 2, 2),
    (2, 5, 5, 217, 64, 64),
    (1, 3, 3, 7, 6, 6),
    (1, 2, 2, 9, 6, 4),
    (2, 2, 2, 33, 128, 128),
    (1, 5, 5, 17, 128, 64),
    (3, 1, 1, 1, 64, 2),
    (2, 4, 2, 11, 64, 64),
    (1, 3, 1, 8, 16, 12),
    (2, 1, 3, 5, 8, 6),
]


@pytest.mark.parametrize("interleaved", LAYOUTS, ids=lambda v: f"interleaved={v}")
@pytest.mark.parametrize("dtype_code", [F32, F16, BF16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("b,h,h_kv,s,dh,r", SHAPES, ids=lambda v: str(v))
def test_host_matches_numpy_reference_bitwise(host, interleaved, dtype_code, k, b, h, h_kv, s, dh, r):
    rng = np.random.default_rng(1234 + 7 * k + dh)
    table = sincos_table(s + 5, r)  # P > S: the kernel must use rows 0..S-1 only
    xs = make_inputs(rng, [(b, h if i == 0 else h_kv, s, dh) for i in range(k)], dtype_code)
    with np.errstate(over="ignore", invalid="ignore"):
        # fp32 math; fp16 cast by numpy (nearest even)
        ref = roformer_rotary_ref(xs, table, rotary_dim=r, interleaved=interleaved)
    if dtype_code == BF16:
        ref = [bf16_round(y) for y in ref]  # the reference computes in fp32; cast_T for bf16
        args = [bf16_bits(x) for x in xs]
    else:
        args = xs
    before = [a.copy() for a in args]
    got = run_host(host, dtype_code, args, table, r, interleaved)
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


@pytest.mark.parametrize("interleaved", LAYOUTS)
def test_passthrough_channels_are_bit_exact(host, interleaved):
    """Channels R..Dh are copied, NaN payloads and -0.0 included (no round trip through a product)."""
    x = np.zeros((1, 1, 3, 8), dtype=np.float32)
    x[..., 4:] = np.array([np.nan, -0.0, np.inf, 1e-45], dtype=np.float32)
    x.view(np.uint32)[..., 4] = 0x7FC12345  # a NaN with a payload
    y = run_host(host, F32, [x], sincos_table(3, 4), 4, interleaved)[0]
    assert np.array_equal(y[..., 4:].view(np.uint32), x[..., 4:].view(np.uint32))


def test_the_two_layouts_pair_different_channels(host):
    """One non-zero channel moves into its partner: channel 1's partner is 0 when interleaved, R/2 + 1 otherwise."""
    x = np.zeros((1, 1, 2, 8), dtype=np.float32)
    x[..., 1] = 1.0
    table = sincos_table(2, 8)
    for interleaved, partner in ((1, 0), (0, 5)):
        y = run_host(host, F32, [x], table, 8, interleaved)[0][0, 0, 1]  # position 1: a non-zero angle
        assert set(np.flatnonzero(y)) == {1, partner}, (interleaved, y)


@pytest.mark.parametrize(
    "dtype,interleaved,k,shape_r_p,message",
    [
        (F32, 1, 1, ((1, 1, 4, 8), 3, 4), "rotary_dim"),  # odd R
        (F32, 0, 1, ((1, 1, 4, 8), 10, 4), "rotary_dim"),  # R > Dh
        (F32, 1, 1, ((1, 1, 4, 8), 0, 4), "rotary_dim"),  # R = 0
        (F32, 0, 1, ((1, 1, 9, 8), 8, 8), "exceeds"),  # S > P
        (F32, 1, 1, ((1, 1, 4, 7), 6, 4), "Dh"),  # odd head size
        (F32, 1, 0, ((1, 1, 4, 8), 8, 4), "k"),  # no tensor
        (F32, 1, 5, ((1, 1, 4, 8), 8, 4), "k"),  # more than 4 tensors
        (7, 1, 1, ((1, 1, 4, 8), 8, 4), "dtype"),  # unknown dtype code
        (F32, 1, 1, ((-1, 1, 4, 8), 8, 4), ">= 0"),  # negative size
        (F32, 1, 2, ((1, (1, -2), 4, 8), 8, 4), ">= 0"),  # a negative head count on x_1
        (F32, 2, 1, ((1, 1, 4, 8), 8, 4), "interleaved"),  # no such layout
        (F32, -1, 1, ((1, 1, 4, 8), 8, 4), "interleaved"),
    ],
)
def test_bad_arguments_are_refused(host, dtype, interleaved, k, shape_r_p, message):
    (b, h, s, dh), r, p = shape_r_p
    heads = heads_array(list(h) if isinstance(h, tuple) else [h] * max(k, 1))
    why = host.roformer_rotary_host_check(dtype, interleaved, k, b, heads, s, dh, r, p)
    assert why is not None and message in why.decode(), why
    x = np.zeros(max(b, 0) * 2 * s * dh + 1, dtype=np.float32)
    y = np.full_like(x, 7.0)
    ptrs = (ctypes.c_void_p * 5)(*([x.ctypes.data] * 5))
    outs = (ctypes.c_void_p * 5)(*([y.ctypes.data] * 5))
    table = np.zeros((max(p, 1), max(r, 1)), dtype=np.float32)
    assert host.roformer_rotary_host(dtype, interleaved, k, ptrs, outs, table.ctypes.data, b, heads, s, dh, r, p) == 1
    assert np.all(y == 7.0), "a refused call must not write its outputs"


def test_null_head_counts_are_refused(host):
    assert b"null" in host.roformer_rotary_host_check(F32, 1, 1, 1, None, 4, 8, 8, 4)
    x = np.zeros(32, dtype=np.float32)
    ptrs = (ctypes.c_void_p * 1)(x.ctypes.data)
    assert host.roformer_rotary_host(F32, 1, 1, ptrs, ptrs, x.ctypes.data, 1, None, 4, 8, 8, 4) == 1


def test_empty_batch_is_a_valid_no_op(host):
    heads = heads_array([12, 4])
    assert host.roformer_rotary_host_check(F32, 0, 2, 0, heads, 5, 64, 64, 8) is None
    assert host.roformer_rotary_host(F32, 0, 2, None, None, None, 0, heads, 5, 64, 64, 8) == 0


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
