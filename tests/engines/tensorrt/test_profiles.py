"""engines.tensorrt.profiles: --batch / --profiles parsing, coverage of max_len, shapes per input, profile_for."""

from __future__ import annotations

import pytest

from engines.tensorrt.profiles import ProfileSet, Range, parse_batch, parse_profiles
from export.errors import UsageError

BS = ("batch", "sequence")
MC = ("batch", "choices", "sequence")


def test_batch_forms():
    assert parse_batch("1,8,32") == Range(1, 8, 32)
    assert parse_batch("16") == Range(1, 16, 16)


@pytest.mark.parametrize(
    "text,msg", [("8,4,32", "min <= opt <= max"), ("1,2", "one number"), ("0", ">= 1"), ("a,b,c", "integers")]
)
def test_batch_errors(text, msg):
    with pytest.raises(UsageError, match=msg):
        parse_batch(text)


def test_buckets_and_added_last():
    assert parse_profiles("128,512,2048", 2048) == [Range(1, 128, 128), Range(129, 512, 512), Range(513, 2048, 2048)]
    # last top below max_len: one bucket is added so every length up to max_len is accepted
    assert parse_profiles("128,512", 1024) == [Range(1, 128, 128), Range(129, 512, 512), Range(513, 1024, 1024)]
    # default: one profile over every length, tuned for a typical serving length, not the longest
    assert parse_profiles(None, 64) == [Range(1, 64, 64)]
    assert parse_profiles(None, 2048) == [Range(1, 128, 2048)] and parse_profiles("", 512) == [Range(1, 128, 512)]
    assert parse_profiles("2048", 2048) == [Range(1, 2048, 2048)]  # the one-profile spelling tuned for max_len
    ps = ProfileSet.from_cli("1,8,32", "128,512", 1024)
    assert ps.added_last and len(ps) == 3


@pytest.mark.parametrize(
    "text,max_len,msg",
    [
        ("512,128", 2048, "ascending"),
        ("128,128", 2048, "ascending"),
        ("128,4096", 2048, "exceeds --max-len 2048"),
        ("0,128", 2048, ">= 1"),
        ("128", 0, "--max-len"),
    ],
)
def test_profile_errors(text, max_len, msg):
    with pytest.raises(UsageError, match=msg) as e:
        parse_profiles(text, max_len)
    assert "\n" not in str(e.value)


def test_shapes_per_input():
    ps = ProfileSet.from_cli("1,8,32", "128,512", 512)
    shapes = ps.shapes(1, {"input_ids": BS, "attention_mask": BS})
    assert shapes["input_ids"] == ((1, 129), (8, 512), (32, 512))
    mc = ProfileSet.from_cli("2", "64", 64, choices=4)
    assert mc.shapes(0, {"input_ids": MC})["input_ids"] == ((1, 4, 1), (2, 4, 64), (2, 4, 64))
    with pytest.raises(UsageError, match="--choices"):
        ps.shapes(0, {"input_ids": MC})
    with pytest.raises(UsageError, match="'seq'"):
        ps.shapes(0, {"input_ids": ("batch", "seq")})


def test_profile_for_and_report():
    ps = ProfileSet.from_cli("1,8,32", "128,512,2048", 2048)
    assert [ps.profile_for(4, s) for s in (1, 128, 129, 512, 513, 2048)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(UsageError, match="outside 1..2048"):
        ps.profile_for(4, 2049)
    with pytest.raises(UsageError, match="batch 33"):
        ps.profile_for(33, 16)
    assert ps.to_report()[1] == {"index": 1, "batch": [1, 8, 32], "sequence": [129, 512, 512]}
    assert "129/512/512" in ps.table()
