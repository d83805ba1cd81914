"""export.inputs.numbers: every number a user types is read by one set of functions, ASCII only, bounded before it is
converted, finite; and no command of the project reads a number any other way (type=int, isdigit)."""

from __future__ import annotations

import ast
import math
import time
from pathlib import Path

import pytest

from export.cli.entry import Parser
from export.errors import UsageError
from export.inputs.numbers import (
    MAX_CHARS,
    NumberError,
    check_int,
    check_real,
    float_arg,
    int_arg,
    json_int,
    parse_float,
    parse_int,
    parse_int_list,
    parse_size,
)

ROOT = Path(__file__).resolve().parents[3]
# Not ASCII digits, though str.isdigit() says True for all but the last two and int() takes some of them.
NOT_ASCII = ["²", "¹²", "١٢", "１２", "߁", "1_000", "0x10"]


@pytest.mark.parametrize("text", NOT_ASCII)
def test_only_ascii_digits_are_integers(text):
    with pytest.raises(NumberError, match="is not an integer; write ASCII digits"):
        parse_int(text, what="--n")


def test_python_itself_takes_some_of_them():
    """Why the helper exists: these pass isdigit() or int() and would reach the code as numbers or tracebacks."""
    assert int("١٢") == 12 and int("１２") == 12 and int("1_000") == 1000 and "²".isdigit()
    with pytest.raises(ValueError):
        int("²")  # isdigit() said yes: the HTTP front's 'Content-Length: ²' traceback


@pytest.mark.parametrize("digits", [400, 5000, 1_000_000])
def test_long_numbers_are_refused_before_conversion(digits):
    text = "9" * digits
    t0 = time.monotonic()
    for parse in (parse_int, parse_float, parse_size):
        with pytest.raises(NumberError, match=rf"\({digits} characters\) is too long .*at most {MAX_CHARS}"):
            parse(text, what="--max-memory")
    assert time.monotonic() - t0 < 0.5  # never converted: int() of a million digits takes seconds


def test_bounds_and_blanks():
    assert parse_int(" 42\t", what="--n", lo=1, hi=42) == 42
    assert parse_int("-3", what="--n") == -3
    for text, lo, hi in (("0", 1, 9), ("10", 1, 9), ("-1", 0, None)):
        with pytest.raises(NumberError, match="is out of range; use an integer"):
            parse_int(text, what="--n", lo=lo, hi=hi)
    for bad in ("", "  ", "4 2", "+", "1.0"):
        with pytest.raises(NumberError):
            parse_int(bad, what="--n")
    assert parse_int_list("1,8,32", what="--batch", lo=1) == [1, 8, 32]
    with pytest.raises(NumberError, match="lists more than 256"):
        parse_int_list(",".join(["1"] * 300), what="--batch")


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e400", "0x1p3", "1,5", "١.٥"])
def test_floats_are_finite_and_ascii(text):
    with pytest.raises(NumberError, match="not a finite number|too large"):
        parse_float(text, what="--time-cap")


def test_float_bounds():
    assert parse_float("1e-3", what="--t") == 1e-3 and parse_float(".5", what="--t") == 0.5
    assert parse_float("0", what="--t", lo=0.0) == 0.0
    with pytest.raises(NumberError, match=r"use a number > 0"):
        parse_float("0", what="--t", lo=0.0, lo_open=True)


@pytest.mark.parametrize(
    "text, value",
    [("2000000000", 2_000_000_000), ("512M", 512 << 20), ("8G", 8 << 30), ("8gib", 8 << 30), ("8 GB", 8 << 30)]
    + [("1.5T", 3 << 39), ("0.5K", 512)],
)
def test_sizes(text, value):
    assert parse_size(text, what="--max-memory") == value


@pytest.mark.parametrize("text", ["lots", "0", "0.0001", "8\u212a", "-1G", "8E", "1e9", "²G", "9" * 25 + "T"])
def test_bad_sizes(text):
    """\u212a is the Kelvin sign, which a case-insensitive Unicode regex matches as 'k'."""
    with pytest.raises(NumberError, match="not a memory size|out of range"):
        parse_size(text, what="--max-memory")


def test_values_a_parser_made():
    """TOML and JSON give ints of any size: compared exactly, never converted first (float(10**400) overflows)."""
    assert check_real(3, what="atol", lo=0.0) == 3.0 and check_int(7, what="n", lo=0) == 7
    for v in (10**400, float("nan"), float("inf"), True, "1", None):
        with pytest.raises(NumberError):
            check_real(v, what="atol", lo=0.0, hi=math.inf)
    with pytest.raises(NumberError, match="too large"):
        check_real(-(10**5000), what="atol")
    with pytest.raises(NumberError, match="about 5001 digits"):  # str() of it would raise ValueError itself
        check_int(10**5000, what="n", hi=10)
    with pytest.raises(NumberError):
        json_int("9" * 5000)
    assert issubclass(NumberError, UsageError) and issubclass(NumberError, ValueError)


def test_argparse_types_give_one_line_exit_2(capsys):
    p = Parser(prog="prog")
    p.add_argument("--n", type=int_arg(1, 8))
    p.add_argument("--t", type=float_arg(0.0, lo_open=True))
    assert p.parse_args(["--n", "8", "--t", "0.5"]).n == 8
    for argv, text in ((["--n", "²"], "not an integer"), (["--n", "0"], "out of range"), (["--t", "nan"], "finite")):
        with pytest.raises(SystemExit) as e:
            p.parse_args(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and text in err[0] and f"argument {argv[0]}" in err[0], err


# Files that read a number with str.isdigit() for a reason of their own, each with that reason.
ALLOWED = {
    "engines/serving/sandbox.py": "the sandbox's own re-exec argv (--parent PID), written by the parent process and "
    "checked isascii() first; no user types it",
}


def python_files():
    for pkg in ("export", "engines", "plugins", "scripts"):
        yield from sorted((ROOT / pkg).rglob("*.py"))


def test_no_command_reads_a_number_another_way():
    """argparse type=int / type=float (Python's int() and float() take '١٢', 'nan', 'inf' and 5000 digits) and
    str.isdigit() ('²') are not used anywhere: numbers go through export.inputs.numbers."""
    found = []
    for path in python_files():
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            if isinstance(node, ast.keyword) and node.arg == "type" and isinstance(node.value, ast.Name):
                if node.value.id in ("int", "float"):
                    found.append(f"{rel}:{node.value.lineno} type={node.value.id}")
            if isinstance(node, ast.Attribute) and node.attr in ("isdigit", "isdecimal", "isnumeric"):
                if rel not in ALLOWED:
                    found.append(f"{rel}:{node.lineno} .{node.attr}()")
    assert not found, found
