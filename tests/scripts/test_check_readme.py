"""scripts/check_readme.py: README's commands are read from the page, go through the one substitution table, and a
command that does not do what its rule says fails the check. Cheap: small pages of `python -c` commands, no build
(the whole check on the real README runs in .ci/run's phase `readme`)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from tests.scripts.test_scripts import load

ROOT = Path(__file__).resolve().parents[2]
cr = load("check_readme")


def page(tmp_path: Path, *commands: str, lang: str = "bash") -> Path:
    readme = tmp_path / "README.md"
    readme.write_text("# a page\n\n```" + lang + "\n" + "\n".join(commands) + "\n```\n", encoding="utf-8")
    return readme


def check(tmp_path: Path, readme: Path) -> tuple[int, dict]:
    out = tmp_path / "out"
    code = cr.main(["--readme", str(readme), "--out", str(out), "--work", str(tmp_path / "work")])
    return code, json.loads((out / "readme_tiny.json").read_text())


def test_a_readme_command_that_fails_fails_the_check(tmp_path, capsys):
    readme = page(tmp_path, 'python -c "print(1)"', 'python -c "import sys; sys.exit(7)"')
    code, results = check(tmp_path, readme)
    assert code == 1
    assert [(o["ok"], o["exit_code"]) for o in results["outcomes"]] == [(True, 0), (False, 7)]
    assert re.search(r"FAIL .*sys\.exit\(7\)", capsys.readouterr().out)
    assert list((tmp_path / "work").iterdir()), "a failed run keeps its folder"


def test_a_page_whose_commands_pass_passes_and_leaves_nothing_behind(tmp_path):
    readme = page(tmp_path, "python -c \"open('made.txt', 'w').write('x')\" && head -n 1 made.txt")
    code, results = check(tmp_path, readme)
    assert code == 0 and [o["ok"] for o in results["outcomes"]] == [True, True]
    assert not list((tmp_path / "work").iterdir())


def test_a_command_no_rule_knows_fails(tmp_path):
    code, results = check(tmp_path, page(tmp_path, "rm -rf nothing-here"))
    assert code == 1 and "no rule" in results["outcomes"][0]["note"]


def test_a_refusal_needs_its_exit_code_and_its_message(tmp_path):
    rule = cr.Rule("", "refuses", 3, r"TensorRT")

    def refused(text: str) -> bool:
        out = cr.Outcome("README's", f"python -c {text!r}", "refuses", "")
        cr.run_one(out, rule, tmp_path, cr.env_for())
        return out.ok

    assert refused("import sys; print('no TensorRT here'); sys.exit(3)")
    assert not refused("import sys; print('no TensorRT here'); sys.exit(2)")
    assert not refused("import sys; print('something else'); sys.exit(3)")


def test_blocks_are_read_as_a_shell_reads_them(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "```bash\npython a.py \\\n  --flag  # a comment\npython b.py && python c.py '# kept' &\n```\n"
        "```text\npython not-a-command.py\n```\n```python\nimport x\n```\n",
        encoding="utf-8",
    )
    got = [(c.text, c.line, c.background) for c in cr.read_commands(readme)]
    assert got == [("python a.py --flag", 2, False), ("python b.py", 4, False), ("python c.py '# kept'", 4, True)]


def test_the_substitution_table_leaves_nothing_demo_sized_in_readme():
    table = cr.substitutions("tiny", (1234, 5678))
    commands = [cr.apply(c.text, table) for c in cr.read_commands(ROOT / "README.md")]
    text = "\n".join(commands)
    for demo in ("--max-len 2048", "128,512,2048", "1,8,32", "8000", "8001", ".venv-serving/bin/python", "--wait 120"):
        assert demo not in text, demo
    assert all("--tiny" in c for c in commands if "make_demo_checkpoint" in c)
    for pattern, _, why in table[:6]:  # each tiny-only row changes some README command: no stale rows
        assert any(re.search(pattern, c.text) for c in cr.read_commands(ROOT / "README.md")), why
    line = "python scripts/make_demo_checkpoint.py --out demo && python -m export.build --model d/c.pt --max-len 2048"
    assert cr.apply(line, table) == (
        f"python {ROOT}/scripts/make_demo_checkpoint.py --tiny --out demo"
        " && python -m export.build --model d/c.pt --max-len 64"
    )
    assert cr.apply("python scripts/make_demo_checkpoint.py --tiny --out d", table).count("--tiny") == 1
    assert cr.apply("python scripts/check_readme.py --port 8000", cr.substitutions("demo", (1234, 5678))).endswith(
        "--port 1234"
    )


def test_every_readme_command_has_a_rule_and_what_is_not_run_is_what_ci_runs():
    ci = cr.ci_commands()
    for c in cr.read_commands(ROOT / "README.md"):
        rule = cr.rule_for(cr.apply(c.text, cr.substitutions("tiny", (1234, 5678))))
        assert rule is not None, c.text
        if rule.action == "same-as-ci":
            assert cr.same_as_ci(c.text, ci) is None, c.text
        if rule.action == "torch-pin":
            assert cr.torch_pin_matches(c.text) is None, c.text


def test_an_install_or_test_command_other_than_ci_s_is_caught(tmp_path):
    ci_run = tmp_path / "run"
    ci_run.write_text(
        'python -m pip install -q -e ".[dev]"\nX=1 Y="${Y:-1}" python -m pytest -q -ra --durations=30  # tests\n'
    )
    ci = cr.ci_commands(ci_run)
    assert cr.same_as_ci('python -m pip install -e ".[dev]"', ci) is None
    assert cr.same_as_ci("python -m pytest -q -ra", ci) is None
    assert cr.same_as_ci('python -m pip install -e ".[dev,gpu]"', ci) is not None
    assert cr.same_as_ci("python -m pytest -q -ra -x", ci) is not None
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('dependencies = [\n    "torch==2.13.*",\n]\n')
    wheel = 'python -m pip install "torch==2.{}.*" --index-url https://download.pytorch.org/whl/cpu'
    assert cr.torch_pin_matches(wheel.format(13), pyproject) is None
    assert cr.torch_pin_matches(wheel.format(12), pyproject) is not None


def test_it_runs_this_checkout_with_this_python():
    env = cr.env_for()
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["PYTHONPATH"].split(":")[0] == str(ROOT)
