"""Run every command README.md shows, in order, as a new user would paste them: on the tiny model by default.

The commands come from README.md itself (its fenced `bash`/`sh`/`shell`/unlabelled blocks; `\\` continuations
joined, `&&` chains split into steps, a trailing `&` run in the background), so this check cannot drift from the
page. Each command goes through one declared substitution table, printed with the results, and must then match a
rule of RULES (the first that matches the command as run):

- run: it must exit 0;
- refuses N: it must exit N with a message that matches the rule's, as README's exit-code table says (here: what
  needs TensorRT and a GPU, or the serving environment);
- same as CI: not run, because `.ci/run` runs it in a phase of its own; the same command must be in `.ci/run`
  (compared after NORMALISE: environment assignments, `-q` and `--durations=N` left out);
- torch pin: the CPU-wheel line, not run (it installs from the network); its pin must be pyproject's;
- skip: not run, with the reason printed;
- synopsis: a usage line (`[--flag ...]`): `--help` must run and name every flag it shows.
A command that no rule matches fails the check: a new kind of example in README needs a rule here.

--size tiny (the default, what `.ci/run` runs): the table maps the demo to the tiny checkpoint, lengths, batches
and profiles to small ones, and the serving environment to this one (`.ci/run` makes `.venv-serving` after this
check), where `engines.serving` and `engines.client` refuse with exit 3 naming what is missing.
--size demo: the commands as written (free ports aside), with README's `.venv-serving` in the repository; it
measures what each command costs on the demo (a few minutes; several GB of memory).

Each command's exit code, wall and CPU seconds and peak RSS (the kernel's rusage of that child) go to
`readme_<size>.{json,md}` in --out (--update-results: scripts/results/readme/). The commands run in a fresh
folder under --work, removed after a run that passed unless --keep.

Usage: python scripts/check_readme.py [--size tiny|demo] [--list] [--keep] [--out DIR | --update-results]
Exit 0 when every command did what its rule says, 1 otherwise, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from script_outputs import add_output_flags

ROOT = Path(__file__).resolve().parents[1]
CI_RUN = ROOT / ".ci" / "run"
TIMEOUT_S = 1800  # one command: the demo's builds take minutes on a loaded 2-core machine
STOP_S = 60  # a background server's time to stop after SIGINT


@dataclass
class Command:
    text: str  # as README shows it (continuations joined)
    line: int  # its README line (the first, for a continued one)
    background: bool = False


@dataclass(frozen=True)
class Rule:
    pattern: str  # regex searched in the command as it is run (after the substitutions)
    action: str  # run | refuses | same-as-ci | torch-pin | skip | synopsis
    code: int = 0  # refuses: the exit code README's table gives
    message: str = ""  # refuses: a regex the command's output must match
    reason: str = ""


@dataclass
class Outcome:
    command: str  # as README shows it
    ran: str  # after the substitutions ("" when not run)
    action: str
    expected: str
    ok: bool = False
    exit_code: int | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_gb: float = 0.0
    note: str = ""
    output_tail: list[str] = field(default_factory=list)


# ---- reading README ---------------------------------------------------------------------------------------------

FENCE = re.compile(r"^```(\w*)\s*$")
SHELL_LANGS = {"", "bash", "sh", "shell"}


def read_commands(readme: Path) -> list[Command]:
    """Every shell command of README's fenced shell blocks, in page order."""
    commands: list[Command] = []
    lang: str | None = None  # None: outside a block
    body: list[tuple[int, str]] = []
    for i, line in enumerate(readme.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(line)
        if m and lang is None:
            lang, body = m.group(1), []
        elif line.strip() == "```" and lang is not None:
            commands += split_block(body) if lang in SHELL_LANGS else []
            lang = None
        elif lang is not None:
            body.append((i, line))
    return commands


def split_block(body: list[tuple[int, str]]) -> list[Command]:
    """A block's lines (README line numbers with them) into commands."""
    joined: list[list] = []
    for i, line in body:
        if joined and joined[-1][1].endswith("\\"):
            joined[-1][1] = joined[-1][1][:-1].rstrip() + " " + line.strip()
        elif joined and line.lstrip().startswith("[") and line[:1].isspace():  # a synopsis's next line
            joined[-1][1] += " " + line.strip()
        else:
            joined.append([i, line.rstrip()])
    out = []
    for i, text in joined:
        text = strip_comment(text).strip()
        if not text:
            continue
        background = text.endswith("&") and not text.endswith("&&")
        steps = [s.strip() for s in (text[:-1] if background else text).split(" && ")]
        out += [Command(s, i, background and n == len(steps) - 1) for n, s in enumerate(steps)]
    return out


def strip_comment(text: str) -> str:
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


def substitutions(size: str, ports: tuple[int, int]) -> list[tuple[str, str, str]]:
    """(regex, replacement, why), applied in order to every command. The commands run in a work folder, so
    README's relative outputs (demo/, build/, model_repository/) land there; the repository's files are named by
    absolute path."""
    tiny = [
        (r"make_demo_checkpoint\.py(?![^&]*--tiny)", "make_demo_checkpoint.py --tiny", "the tiny checkpoint"),
        (r"--max-len 2048\b", "--max-len 64", "a tiny length"),
        (r"--profiles 128,512,2048\b", "--profiles 16,32,64", "profiles within it"),
        (r"--batch 1,8,32\b", "--batch 1,2,4", "small batches"),
        (r"--wait 120\b", "--wait 5", "no server to wait for"),
        (
            r"(?<![\w/.-])\.venv-serving/bin/python\b",
            "python",
            ".ci/run makes .venv-serving after this check: this environment, where serving refuses (exit 3)",
        ),
    ]
    common = [
        (r"(?<![\w/.-])scripts/", f"{ROOT}/scripts/", "the repository's scripts"),
        (r"(?<![\w/.-])\.venv-serving/", f"{ROOT}/.venv-serving/", "the repository's serving environment"),
        (r"\b8000\b", str(ports[0]), "a free port"),
        (r"\b8001\b", str(ports[1]), "a free port"),
    ]
    return (tiny if size == "tiny" else []) + common


SERVING_MISSING = "this environment has no serving extra (nvidia-pytriton, numpy<2, rjieba)"
RULES: list[Rule] = [
    Rule(r"^python3? -m venv ", "same-as-ci"),
    Rule(r"^\. \S+/activate$", "same-as-ci", reason="here the commands run with this environment's python first"),
    Rule(r"pip install .*--index-url https://download\.pytorch\.org/", "torch-pin", reason="installs from the net"),
    Rule(r"-m pip install ", "same-as-ci"),
    Rule(r"-m pytest\b", "same-as-ci", reason=".ci/run's test phase"),
    Rule(r"\s\[--", "synopsis"),
    Rule(r"^python -m engines\.serving\b", "refuses", 3, r"nvidia-pytriton|numpy", SERVING_MISSING),
    Rule(r"^python -m engines\.client\b", "refuses", 3, r"rjieba|not ready", SERVING_MISSING),
    Rule(r"-m engines\.build\b", "refuses", 3, r"TensorRT", "needs TensorRT and a GPU"),
    Rule(r"--require-engine\b", "refuses", 3, r"TensorRT", "needs TensorRT and a GPU"),
    Rule(r"^tritonserver\b", "skip", reason="NVIDIA's tritonserver with its TensorRT backend, on a GPU"),
    Rule(r"^\S*python\b", "run"),
    Rule(r"^(head|cat|ls)\b", "run"),
]


def rule_for(ran: str) -> Rule | None:
    return next((r for r in RULES if re.search(r.pattern, ran)), None)


def apply(text: str, table: list[tuple[str, str, str]]) -> str:
    for pattern, replacement, _ in table:
        text = re.sub(pattern, replacement.replace("\\", "\\\\"), text)  # the replacement literally
    return text


# ---- what .ci/run and pyproject.toml say ------------------------------------------------------------------------

NORMALISE = "environment assignments, -q/--quiet and --durations=N left out"


def normalise(command: str) -> list[str]:
    try:
        words = shlex.split(command)
    except ValueError:  # a piece of a shell construct (split at a `&&` inside `$(...)`): words as they stand
        words = command.split()
    while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
        words.pop(0)
    return [w for w in words if w not in ("-q", "--quiet") and not re.match(r"^--durations=\d+$", w)]


def ci_commands(ci_run: Path = CI_RUN) -> list[list[str]]:
    """Every command of .ci/run (continuations joined, `&&` chains split), normalised."""
    text = re.sub(r"\\\n\s*", " ", ci_run.read_text(encoding="utf-8"))
    lines = [strip_comment(line).strip() for line in text.splitlines()]
    return [normalise(step) for line in lines if line for step in line.split(" && ")]


def same_as_ci(command: str, ci: list[list[str]]) -> str | None:
    """None when .ci/run runs this command, else why not."""
    return None if normalise(command) in ci else f"not in .ci/run ({NORMALISE})"


def torch_pin_matches(command: str, pyproject: Path = ROOT / "pyproject.toml") -> str | None:
    pins = re.findall(r'"(torch[=<>~!][^"]*)"', pyproject.read_text(encoding="utf-8"))
    wanted = [w for w in shlex.split(command) if w.startswith("torch")]
    return None if wanted and wanted == pins else f"pins {wanted}, pyproject.toml {pins}"


# ---- running ----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for() -> dict[str, str]:
    """`python` is this interpreter (as after `. .venv/bin/activate`), importing this checkout."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def start(command: str, cwd: Path, env: dict, out) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", "-c", command], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: a timeout or a stop reaches its children too
    )  # fmt: skip


def reap(proc: subprocess.Popen, deadline: float, then=signal.SIGKILL) -> tuple[int, float, float]:
    """Wait for `proc` (sending `then` to its group past `deadline`): exit code, CPU seconds, peak RSS in GB."""
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
            return proc.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024 / 1e9
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, then)
            deadline, then = time.monotonic() + STOP_S, signal.SIGKILL
        time.sleep(0.05)


def run_one(out: Outcome, rule: Rule, work: Path, env: dict) -> None:
    with tempfile.TemporaryFile() as log:
        t0 = time.monotonic()
        code, out.cpu_s, out.peak_rss_gb = reap(start(out.ran, work, env, log), t0 + TIMEOUT_S)
        out.wall_s, out.exit_code = time.monotonic() - t0, code
        log.seek(0)
        text = log.read().decode(errors="replace")
    out.output_tail = text.strip().splitlines()[-8:]
    if rule.action == "refuses":
        said = re.search(rule.message, text) is not None
        out.ok = code == rule.code and said
        out.note = rule.reason + ("" if said else f"; the output does not match /{rule.message}/")
    else:
        out.ok = code == 0


def synopsis_check(out: Outcome, work: Path, env: dict) -> None:
    """`--help` of the synopsis's command names every flag the synopsis shows."""
    words = out.ran.split("[", 1)[0]
    flags = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", out.ran))
    r = subprocess.run(f"{words} --help", shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    missing = sorted(f for f in flags if f not in r.stdout)
    out.exit_code, out.ok = r.returncode, r.returncode == 0 and not missing
    out.note = f"--help does not name {missing}" if missing else f"--help names its {len(flags)} flags"


EXPECTED = {"run": "exit 0", "same-as-ci": "in .ci/run", "torch-pin": "pyproject's pin", "skip": "skipped"}


def check(c: Command, table, work: Path, env: dict, ci: list[list[str]], servers: list) -> Outcome:
    ran = apply(c.text, table)
    rule = rule_for(ran)
    if rule is None:
        return Outcome(c.text, ran, "none", "a rule", note="no rule matches: add one to RULES in check_readme.py")
    expected = f"exit {rule.code}, /{rule.message}/" if rule.action == "refuses" else EXPECTED.get(rule.action, "")
    out = Outcome(c.text, ran, rule.action, expected or "--help names its flags", note=rule.reason)
    print(f"[check_readme] {rule.action:10} {ran}", file=sys.stderr, flush=True)
    if rule.action in ("same-as-ci", "torch-pin"):
        problem = same_as_ci(c.text, ci) if rule.action == "same-as-ci" else torch_pin_matches(c.text)
        out.ran, out.ok, out.note = "", problem is None, problem or rule.reason
    elif rule.action == "skip":
        out.ran, out.ok = "", True
    elif rule.action == "synopsis":
        synopsis_check(out, work, env)
    elif c.background and rule.action == "run":
        log = open(work / f"background-{len(servers)}.log", "wb")  # noqa: SIM115 (closed when it is stopped)
        servers.append((out, start(ran, work, env, log), log, time.monotonic()))
        out.note = f"in the background until the last command ran; log {log.name}"
    else:
        run_one(out, rule, work, env)
    return out


def stop(servers: list) -> None:
    """SIGINT (Ctrl-C) to each background command; each must stop cleanly (exit 130, or 0)."""
    for out, proc, log, t0 in servers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        code, out.cpu_s, out.peak_rss_gb = reap(proc, time.monotonic() + STOP_S, signal.SIGTERM)
        out.exit_code, out.wall_s, out.ok = code, time.monotonic() - t0, code in (0, 130)
        log.close()
        out.output_tail = Path(log.name).read_text(errors="replace").strip().splitlines()[-8:]


def run_all(commands: list[Command], table, work: Path) -> list[Outcome]:
    env, ci = env_for(), ci_commands()
    servers: list[tuple[Outcome, subprocess.Popen, object, float]] = []
    try:
        return [check(c, table, work, env, ci, servers) for c in commands]
    finally:
        stop(servers)


# ---- reporting --------------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    load = os.getloadavg()[0]
    return f"{cpu}, {os.cpu_count()} cores, load {load:.1f} at the end; Python {platform.python_version()}"


def render(results: dict) -> str:
    lines = [
        f"# README's commands, {results['size']} ({results['date']}, {results['machine']})",
        "",
        f"`python scripts/check_readme.py --size {results['size']}`: every command of README.md in page order, "
        f"{results['passed']} of {len(results['outcomes'])} as README says, {results['wall_s']:.0f} s in all. "
        "Peak RSS is the kernel's rusage of each command's process tree (GB = 10^9 bytes).",
        "",
        "Substitutions (regex -> replacement):",
        "",
        *[f"- `{p}` -> `{r}`: {why}" for p, r, why in results["substitutions"]],
        "",
        "| # | README command | rule | exit | wall s | CPU s | peak RSS GB | ok |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, o in enumerate(results["outcomes"], 1):
        ran = o["exit_code"] is not None
        cells = [f"{o['exit_code']}", f"{o['wall_s']:.1f}", f"{o['cpu_s']:.1f}", f"{o['peak_rss_gb']:.2f}"]
        cells = cells if ran else ["", "", "", ""]
        row = [str(i), f"`{o['command']}`", o["action"], *cells, "yes" if o["ok"] else "**NO**"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines) + "\n"


def report(outcomes: list[Outcome]) -> None:
    for o in outcomes:
        timing = f"{o.wall_s:6.1f}s" if o.exit_code is not None else "   -   "
        note = f"   ({o.note})" if o.note else ""
        print(f"{'ok  ' if o.ok else 'FAIL'} {timing}  {o.expected:28} {o.command}{note}")
        for line in [] if o.ok else o.output_tail:
            print(f"         | {line}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["tiny", "demo"], default="tiny", help="tiny: through the table; demo: as written")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md", help="the page whose commands are run")
    p.add_argument("--list", action="store_true", help="only list the commands, their rules and substitutions")
    p.add_argument("--keep", action="store_true", help="keep the run's folder under --work after it passed")
    add_output_flags(p, "check_readme", "readme", work=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.readme.is_file():
        print(f"error: --readme {args.readme} is not a file", file=sys.stderr)
        return 2
    if args.size == "demo" and not args.list and not (ROOT / ".venv-serving" / "bin" / "python").exists():
        print("error: --size demo runs README's serving commands: make .venv-serving first (README)", file=sys.stderr)
        return 2
    commands, table = read_commands(args.readme), substitutions(args.size, (free_port(), free_port()))
    print("substitutions (regex -> replacement: why):")
    for pattern, replacement, why in table:
        print(f"  {pattern!r} -> {replacement!r}: {why}")
    if args.list:
        for c in commands:
            ran = apply(c.text, table)
            print(f"  line {c.line}: {(rule_for(ran) or Rule('', 'NO RULE')).action}: {ran}")
        return 0 if all(rule_for(apply(c.text, table)) for c in commands) else 1
    args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{args.size}-", dir=args.work))  # ours alone, removed when it passed
    t0 = time.monotonic()
    outcomes = run_all(commands, table, work)
    report(outcomes)
    passed = sum(o.ok for o in outcomes)
    results = {
        "size": args.size,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "wall_s": time.monotonic() - t0,
        "passed": passed,
        "substitutions": table,
        "outcomes": [asdict(o) for o in outcomes],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"readme_{args.size}.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    (args.out / f"readme_{args.size}.md").write_text(render(results))
    summary = f"{passed} of {len(outcomes)} commands as README says, {results['wall_s']:.0f} s"
    print(f"\n{summary}: {args.out / f'readme_{args.size}.md'}")
    if passed == len(outcomes) and not args.keep:
        shutil.rmtree(work)
    else:
        print(f"the commands' folder is kept: {work}")
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
