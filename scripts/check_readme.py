"""Run every command README.md shows, as a new user would paste it, on the tiny model.

The commands are read from README.md itself (its fenced `bash`/`sh`/unlabelled blocks, `&&` chains split into
steps, `\\` continuations joined, a trailing `&` run in the background), so this check cannot drift from the page.
Each command goes through one declared substitution table (the demo checkpoint becomes the tiny one, lengths
shrink, ports become free ones), printed with the results, and must match exactly one rule of `RULES`:

- run: it must exit 0;
- refuses N: it must exit N (a command that needs a GPU, TensorRT or tritonserver's TensorRT backend exits 3
  here, as README's exit-code table says);
- synopsis: a usage line (`[--flag ...]`): `--help` must run and name every flag the synopsis shows;
- skip: not run, with the reason printed (the install: `.ci/run` runs that very command first; checked to be
  the same text).
A command no rule matches fails the check: a new example in README needs a rule here.

Usage: python scripts/check_readme.py [--work DIR] [--json FILE] [--list]
Exit 0 when every command did what its rule says, 1 otherwise, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900  # one command; the tiny build takes seconds, tritonserver's start up to a minute under load


@dataclass
class Command:
    text: str  # as README shows it (continuations joined)
    block: int  # the fenced block's number, in page order
    line: int  # README line of the block's first line
    background: bool = False


@dataclass
class Outcome:
    command: str
    ran: str  # after substitution ("" when not run)
    rule: str
    expected: str
    exit_code: int | None = None
    seconds: float = 0.0
    ok: bool = False
    note: str = ""
    output_tail: list[str] = field(default_factory=list)


# ---- reading README ---------------------------------------------------------------------------------------------

FENCE = re.compile(r"^```(\w*)\s*$")
SHELL_LANGS = {"", "bash", "sh", "shell"}


def read_commands(readme: Path) -> list[Command]:
    """Every shell command of README's fenced shell blocks, in page order."""
    commands: list[Command] = []
    lines = readme.read_text(encoding="utf-8").splitlines()
    block, lang, start, body = 0, None, 0, []  # lang None: outside a block
    for i, line in enumerate(lines, 1):
        m = FENCE.match(line)
        if m and lang is None:
            lang, start, body = m.group(1), i, []
        elif line.strip() == "```" and lang is not None:
            if lang in SHELL_LANGS:
                block += 1
                commands += _split_block(body, block, start)
            lang = None
        elif lang is not None:
            body.append(line)
    return commands


def _split_block(body: list[str], block: int, start: int) -> list[Command]:
    joined: list[str] = []
    for line in body:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1].rstrip() + " " + line.strip()
        elif joined and line.lstrip().startswith("[") and line[:1].isspace():  # a synopsis's next line
            joined[-1] += " " + line.strip()
        else:
            joined.append(line.rstrip())
    out = []
    for text in joined:
        text = _strip_comment(text).strip()
        if not text:
            continue
        background = text.endswith("&") and not text.endswith("&&")
        text = text.rstrip("&").strip() if background else text
        steps = [s.strip() for s in text.split(" && ")]
        out += [Command(s, block, start, background and s is steps[-1]) for s in steps]
    return out


def _strip_comment(text: str) -> str:
    """Drop a trailing `# comment` that is not inside quotes."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i]
    return text


# ---- the substitution table and the rules -----------------------------------------------------------------------


def substitutions(work: Path, ports: dict[str, int]) -> list[tuple[str, str]]:
    """(regex, replacement), applied in order to every command. Commands run with the work folder as their
    current directory, so README's relative outputs (demo/, build/...) land there; the repository's own
    files are named by absolute path."""
    return [
        (r"make_demo_checkpoint\.py(?![^&]*--tiny)", "make_demo_checkpoint.py --tiny"),
        (r"(?<![\w/.-])scripts/", f"{ROOT}/scripts/"),
        (r"(?<![\w/.-])engines/cpp\b", f"{ROOT}/engines/cpp"),
        (r"(?<![\w/.-])plugins/build/", f"{ROOT}/plugins/build/"),
        (r"(?<![\w/.-])\.venv-serving/", f"{ROOT}/.venv-serving/"),
        (r"--max-len 2048\b", "--max-len 64"),
        (r"--max-len 8192\b", "--max-len 64"),
        (r"--profiles 128,512,2048\b", "--profiles 16,32,64"),
        (r"--batch 1,8,32\b", "--batch 1,2,4"),
        (r"\b8000\b", str(ports["http"])),
        (r"\b8001\b", str(ports["grpc"])),
    ]


@dataclass(frozen=True)
class Rule:
    pattern: str  # regex searched in the command as README shows it
    action: str  # run | refuses | synopsis | skip
    code: int = 0  # for refuses
    reason: str = ""


RULES: list[Rule] = [
    Rule(r"^pip install ", "skip", reason="the install: .ci/run runs this very command before this check"),
    Rule(r"^python3? -m venv \.venv-serving", "skip", reason="the serving venv: .ci/run builds it before this check"),
    Rule(r"^\.venv-serving/bin/pip install", "skip", reason="the serving venv: .ci/run builds it before this check"),
    Rule(r"^python -m pytest\b", "skip", reason="the test command: .ci/run runs it before this check"),
    Rule(r"\s\[--", "synopsis"),
    Rule(r"^python -m engines\.build\b", "refuses", 3, "needs TensorRT"),
    Rule(r"--require-engine\b", "refuses", 3, "needs TensorRT"),
    Rule(r"^tritonserver\b", "skip", reason="NVIDIA's tritonserver with the TensorRT backend and a GPU"),
    Rule(r"^cmake --build\b", "run"),
    Rule(r"^cmake\b", "run"),
    Rule(r"^printf .*\|\s*build/cpp/embed\b", "skip", reason="the C++ example runs an engine: needs TensorRT"),
    Rule(r"^(python|\.venv-serving/bin/python)\b", "run"),
    Rule(r"^(cat|less|head|ls|jq)\b", "run"),
]


def rule_for(text: str) -> Rule | None:
    for rule in RULES:
        if re.search(rule.pattern, text):
            return rule
    return None


# ---- running ----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def apply(text: str, table: list[tuple[str, str]]) -> str:
    for pattern, replacement in table:
        text = re.sub(pattern, replacement, text)
    return text


def env_for(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)  # `python` is this environment's, as after `. .venv/bin/activate`
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def synopsis_check(text: str, work: Path, env: dict) -> tuple[bool, str, int | None]:
    """`--help` of the synopsis's command names every flag the synopsis shows."""
    words = shlex.split(text.split("[", 1)[0])
    flags = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", text))
    r = subprocess.run([*words, "--help"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    missing = sorted(f for f in flags if f not in r.stdout)
    if r.returncode != 0:
        return False, f"--help exited {r.returncode}", r.returncode
    return not missing, (f"--help does not name {missing}" if missing else f"--help names all {len(flags)} flags"), 0


def run_all(commands: list[Command], work: Path, table: list[tuple[str, str]]) -> list[Outcome]:
    env = env_for(work)
    background: list[subprocess.Popen] = []
    outcomes = []
    try:
        for c in commands:
            rule = rule_for(c.text)
            if rule is None:
                outcomes.append(Outcome(c.text, "", "none", "a rule", note="no rule matches: add one to RULES"))
                continue
            ran = apply(c.text, table)
            expected = {"run": "exit 0", "refuses": f"exit {rule.code}", "synopsis": "--help names its flags"}
            out = Outcome(c.text, ran, rule.pattern, expected.get(rule.action, "skipped"), note=rule.reason)
            start = time.monotonic()
            print(f"[check_readme] {rule.action:8} {ran}", file=sys.stderr, flush=True)
            if rule.action == "skip":
                out.ok, out.ran = True, ""
            elif rule.action == "synopsis":
                out.ok, out.note, out.exit_code = synopsis_check(ran, work, env)
            elif c.background:
                log = open(work / f"background-{len(background)}.log", "w")  # noqa: SIM115 (closed with the process)
                background.append(subprocess.Popen(ran, shell=True, cwd=work, env=env, stdout=log, stderr=log))
                out.ok, out.note = True, f"started in the background, log {log.name}"
            else:
                r = subprocess.run(
                    ran, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
                )
                want = rule.code if rule.action == "refuses" else 0
                out.exit_code, out.ok = r.returncode, r.returncode == want
                out.output_tail = (r.stdout + r.stderr).strip().splitlines()[-6:]
            out.seconds = round(time.monotonic() - start, 1)
            outcomes.append(out)
    finally:
        for p in background:
            p.terminate()
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
    return outcomes


def install_matches_ci(commands: list[Command]) -> str | None:
    """The install README shows is the one .ci/run runs (so skipping it here hides nothing)."""
    ci = (ROOT / ".ci" / "run").read_text()
    for c in commands:
        if c.text.startswith("pip install ") and c.text.split("pip ", 1)[1] not in ci:
            return f"README's {c.text!r} is not what .ci/run runs"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "check-readme", help="where the commands run")
    p.add_argument("--json", type=Path, help="write the outcomes here too")
    p.add_argument("--list", action="store_true", help="only list the commands, their rules and substitutions")
    args = p.parse_args(argv)
    commands = read_commands(args.readme)
    args.work.mkdir(parents=True, exist_ok=True)
    if any(args.work.iterdir()):
        print(f"error: --work {args.work} is not empty; name an empty or new folder", file=sys.stderr)
        return 2
    ports = {"http": free_port(), "grpc": free_port()}
    table = substitutions(args.work, ports)
    print("substitutions (regex -> replacement):")
    for pattern, replacement in table:
        print(f"  {pattern!r} -> {replacement!r}")
    if args.list:
        for c in commands:
            rule = rule_for(c.text)
            print(f"  block {c.block} (line {c.line}): {rule.action if rule else 'NO RULE'}: {c.text}")
        return 0 if all(rule_for(c.text) for c in commands) else 1
    outcomes = run_all(commands, args.work, table)
    problem = install_matches_ci(commands)
    print(
        f"\n{'ok' if not problem else 'FAIL'}: install command the same as .ci/run's"
        + (f": {problem}" if problem else "")
    )
    for o in outcomes:
        status = "ok  " if o.ok else "FAIL"
        print(f"{status} {o.seconds:6.1f}s  {o.expected:24} {o.command}" + (f"   ({o.note})" if o.note else ""))
        if not o.ok:
            for line in o.output_tail:
                print(f"         | {line}")
    if args.json:
        args.json.write_text(json.dumps({"substitutions": table, "outcomes": [asdict(o) for o in outcomes]}, indent=1))
    failed = [o for o in outcomes if not o.ok]
    print(f"\n{len(outcomes) - len(failed)} of {len(outcomes)} commands as README says")
    return 1 if failed or problem else 0


if __name__ == "__main__":
    sys.exit(main())
