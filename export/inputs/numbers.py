"""Every number a user types, read by one set of functions: command-line flags, environment variables, sizes,
numbers in the TOML and JSON files a user hands us, and header values.

In:  text (or, for `check_int` / `check_real`, a value a TOML or JSON parser already made), what it is (for the
     message) and the bounds the caller allows.
Out: an int or a finite float inside the bounds; else NumberError (a UsageError, exit 2, and a ValueError) whose
     one line says what was read, what is allowed and how to write it.

- ASCII only: an optional sign, the digits 0-9 and, for floats, one '.' and an exponent. `str.isdigit()` and
  `int()` also take '²', '¹²', '١٢' (Arabic-Indic) and fullwidth digits; all are refused here, as are '_'
  separators and blanks inside the number (blanks around it are dropped).
- Bounded before conversion: text longer than MAX_CHARS is refused before `int()` / `float()` see it, so a
  400- or a 5,000-digit number is one line, never an OverflowError or Python's 4300-digit ValueError.
- Floats: decimal or exponent notation; nan, inf and anything that rounds to inf are refused.
- Sizes (`parse_size`): bytes, with an optional binary unit K, M, G or T (powers of 1024) and an optional
  trailing B or iB, e.g. 2000000000, 512M, 8G, 1.5T, 8GiB; from 1 byte to MAX_SIZE.

For argparse, `int_arg(lo, hi)`, `float_arg(lo, hi)` and `size_arg()` are `type=`
callables: argparse turns their refusal into its one-line usage error (exit 2, export.cli.entry.Parser).
A server's header value is read with `parse_int(value, what="Content-Length", lo=0, hi=...)`: the same ASCII rule.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from decimal import Decimal

from export.errors import UsageError

MAX_CHARS = 64  # longest number text read: any int64 or double fits in far less
MAX_SIZE = 1 << 60  # bytes: an exbibyte, beyond any machine's memory or disk
_BLANKS = " \t\r\n"
_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
# re.ASCII: with IGNORECASE alone, 'K' would also match the Kelvin sign U+212A
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)[ \t]*([KMGT]?)(?:i?B)?", re.ASCII | re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class NumberError(UsageError, ValueError):
    """A number that cannot be used; str(e) is the one line shown."""


def parse_int(text: str, *, what: str = "", lo: int | None = None, hi: int | None = None) -> int:
    """An integer written in ASCII digits, inside [lo, hi] (None: unbounded on that side)."""
    s = _clean(text, what, "an integer")
    if not _INT.fullmatch(s):
        raise NumberError(f"{_subject(what, text)} is not an integer; write ASCII digits 0-9, e.g. 42")
    return _in_range(int(s), _subject(what, text), lo, hi, "an integer")


def parse_float(
    text: str, *, what: str = "", lo: float | None = None, hi: float | None = None, lo_open: bool = False
) -> float:
    """A finite number in decimal or exponent notation, inside [lo, hi] (lo_open: lo itself excluded)."""
    s = _clean(text, what, "a number")
    if not _FLOAT.fullmatch(s):
        finite = " (nan and inf are not numbers here)" if s.lstrip("+-").lower() in ("nan", "inf", "infinity") else ""
        raise NumberError(f"{_subject(what, text)} is not a finite number{finite}; write e.g. 0.5, 20 or 1e-3")
    v = float(s)  # at most MAX_CHARS of ASCII: overflow gives inf, never an exception
    if not math.isfinite(v):
        raise NumberError(f"{_subject(what, text)} is too large; {_range_text(lo, hi, 'a number', lo_open)}")
    return _in_range(v, _subject(what, text), lo, hi, "a number", lo_open)


def parse_size(text: str, *, what: str = "", lo: int = 1, hi: int = MAX_SIZE) -> int:
    """Bytes: e.g. 2000000000, 512M, 8G, 1.5T, 8GiB (K, M, G, T: powers of 1024)."""
    s = _clean(text, what, "a size")
    m = _SIZE.fullmatch(s)
    if not m:
        raise NumberError(f"{_subject(what, text)} is not a memory size; write e.g. 8G, 512M or 2000000000")
    v = int(Decimal(m.group(1)) * _UNITS[m.group(2).upper()])  # exact: no float rounding of the mantissa
    if not lo <= v <= hi:
        raise NumberError(f"{_subject(what, text)} is out of range; use a size from {lo} to {hi} bytes")
    return v


def parse_int_list(
    text: str, *, what: str = "", lo: int | None = None, hi: int | None = None, sep: str = ",", max_items: int = 256
) -> list[int]:
    """`sep`-separated integers, each as parse_int reads it; at most max_items of them."""
    parts = str(text).split(sep)
    if len(parts) > max_items:
        raise NumberError(f"{_subject(what, text)} lists more than {max_items} numbers; give at most {max_items}")
    return [parse_int(p, what=what, lo=lo, hi=hi) for p in parts]


def check_int(value, *, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """A value a parser made (TOML, JSON): an int (not a bool) inside [lo, hi]."""
    subject = f"{what} = {_show(value)}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise NumberError(f"{subject} is not an integer; {_range_text(lo, hi, 'an integer')}")
    return _in_range(value, subject, lo, hi, "an integer")


def check_real(value, *, what: str, lo: float | None = None, hi: float | None = None) -> float:
    """A value a parser made (TOML, JSON): an int or float (not a bool), finite, inside [lo, hi], as a float.
    An int is compared exactly, never converted first (float(10**400) raises OverflowError)."""
    subject, allowed = f"{what} = {_show(value)}", _range_text(lo, hi, "a finite number")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NumberError(f"{subject} is not a number; {allowed}")
    if isinstance(value, float) and not math.isfinite(value):
        raise NumberError(f"{subject} is not finite; {allowed}")
    _in_range(value, subject, lo, hi, "a finite number")
    if isinstance(value, int) and abs(value) > 2**1000:  # inside unbounded limits, but no float can hold it
        raise NumberError(f"{subject} is too large; {allowed}")
    return float(value)


def json_int(text: str) -> int:
    """json.loads(parse_int=json_int): an integer literal of at most MAX_CHARS digits (the decoder's own int()
    raises a ValueError past 4300 digits, and a long one costs quadratic time before that)."""
    if len(text) > MAX_CHARS:
        raise NumberError(f"an integer of {len(text)} digits (the most read is {MAX_CHARS})")
    return int(text)


def int_arg(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """argparse type=: parse_int with these bounds."""
    return _arg(lambda t: parse_int(t, lo=lo, hi=hi), "integer")


def float_arg(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable[[str], float]:
    """argparse type=: parse_float with these bounds."""
    return _arg(lambda t: parse_float(t, lo=lo, hi=hi, lo_open=lo_open), "number")


def size_arg(lo: int = 1, hi: int = MAX_SIZE) -> Callable[[str], int]:
    """argparse type=: parse_size."""
    return _arg(lambda t: parse_size(t, lo=lo, hi=hi), "size")


def _arg(parse: Callable, name: str) -> Callable:
    def convert(text: str):
        try:
            return parse(text)
        except NumberError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name  # argparse names the type in some messages
    return convert


def _clean(text, what: str, kind: str) -> str:
    if not isinstance(text, str):
        raise NumberError(f"{_subject(what, text)} is not {kind}")
    s = text.strip(_BLANKS)
    if len(s) > MAX_CHARS:
        raise NumberError(f"{_subject(what, text)} is too long for {kind} (at most {MAX_CHARS} characters)")
    if not s:
        raise NumberError(f"{what or 'the value'} is empty; write {kind}")
    return s


def _in_range(v, subject: str, lo, hi, kind: str, lo_open: bool = False):
    if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
        raise NumberError(f"{subject} is out of range; {_range_text(lo, hi, kind, lo_open)}")
    return v


def _range_text(lo, hi, kind: str, lo_open: bool = False) -> str:
    lo = None if lo == -math.inf else lo
    hi = None if hi == math.inf else hi
    if lo is not None and hi is not None:
        return f"use {kind} from {lo} {'(excluded) ' if lo_open else ''}to {hi}"
    if lo is not None:
        return f"use {kind} {'>' if lo_open else '>='} {lo}"
    return f"use {kind} <= {hi}" if hi is not None else f"use {kind}"


def _subject(what: str, text) -> str:
    return f"{what} {_show(text)}" if what else _show(text)


def _show(value) -> str:
    """repr (control characters escaped, so the line stays one line), long text cut with its length said."""
    if isinstance(value, int) and value.bit_length() > 200:  # str() of a 5000-digit int raises ValueError
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = value if isinstance(value, str) else str(value) if isinstance(value, (int, float)) else repr(value)
    if len(text) > 24:
        return f"{text[:12]!r}...({len(text)} characters)"
    return repr(text) if isinstance(value, str) else text
