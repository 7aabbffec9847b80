"""The README is a contract: its first-hour commands run here exactly as written there, read from the file,
and what they print is what the README says they print.

Commands are the lines of the "A first hour" section that start a 4-space code block line with `distrain `
or `python benchmarks/` (indented example output is not run). Dry runs shown elsewhere as `$ distrain ...`
blocks are run too, and every line the README shows before its "..." must be in their output.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_ok, distrain, metrics

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def commands(text: str) -> list[str]:
    return [line[4:] for line in text.splitlines()
            if line.startswith(("    distrain ", "    python benchmarks/"))]


def run(command: str, cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    argv = shlex.split(command)
    if argv[0] == "python":
        proc = subprocess.run([sys.executable, str(REPO / argv[1]), *argv[2:]], cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)
        proc.all = proc.stdout + proc.stderr
        return proc
    assert argv[0] == "distrain", command
    scratch = cwd / "tmp"  # the commands' temporary files, to check that they leave none
    scratch.mkdir(exist_ok=True)
    return distrain(*argv[1:], cwd=cwd, timeout=timeout, env={"PYTHONPATH": str(REPO), "TMPDIR": str(scratch)},
                    fresh=True)  # a new interpreter each, as in the user's shell


def test_first_hour_commands_do_what_the_readme_says(tmp_path):
    steps = commands(section("A first hour"))
    assert len(steps) == 6, steps  # first run, digits, digits run, eval, the same run again, status
    first, make_digits, train, evaluate, again, status = steps
    assert again == train, "the README's 'same command again' must be the training command, verbatim"

    synthetic = run(first, tmp_path)
    assert_ok(synthetic)  # it trains --steps-per-epoch batches of its images per epoch, and says so
    assert re.search(r"\d+ train \(\d+ of them per epoch: --steps-per-epoch 20\)", synthetic.stdout), synthetic.stdout
    assert_ok(run(make_digits, tmp_path))
    trained = run(train, tmp_path)
    assert_ok(trained)
    run_dir = re.search(r"run finished: (\S+)", trained.stdout).group(1)
    assert run_dir in evaluate and run_dir in status, "the README names the run dir this command creates"
    rows = metrics(tmp_path / run_dir)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    undocumented = [key for key in rows[0] if key not in section("A first hour")]
    assert not undocumented, f"metrics.jsonl keys missing from the README's run-dir list: {undocumented}"
    best = max(rows, key=lambda r: r["val_acc1"])
    assert best["val_acc1"] > 80, rows  # the README's promise for the digits run
    assert f"best acc1 {best['val_acc1']:.2f}% at epoch {best['epoch'] + 1}" in trained.stdout
    assert "timing:" in trained.stdout and "one epoch of" in trained.stdout

    scored = run(evaluate, tmp_path)  # no extra options: the checkpoint's own preprocessing
    assert_ok(scored)
    assert f"acc1 {best['val_acc1']:.2f}%  acc5 {best['val_acc5']:.2f}%  loss {best['val_loss']:.4f}" in scored.stdout

    started = time.monotonic()
    repeated = run(again, tmp_path)
    assert_ok(repeated)
    assert time.monotonic() - started < 10  # nothing is started (3 s on a quiet machine, with imports)
    assert "run complete" in repeated.stdout and f"best acc1 {best['val_acc1']:.2f}%" in repeated.stdout
    assert [r["epoch"] for r in metrics(tmp_path / run_dir)] == [0, 1, 2, 3]  # nothing trained again

    state = run(status, tmp_path)
    assert_ok(state)
    assert "finished, 4 of 4 epochs done" in state.stdout
    assert not any("Traceback" in p for p in (trained.all, scored.all, repeated.all, state.all))
    left = [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("distrain")]
    assert not left, f"eval leaves no temporary folder behind: {left}"


def shown_dry_runs() -> list[tuple[str, list[str]]]:
    """(`$ distrain ...` command, the output lines the README shows up to its '...')."""
    out = []
    for block in re.findall(r"```\n(.*?)```", README, flags=re.S):
        lines = block.splitlines()
        if lines and lines[0].startswith("$ distrain ") and "--dry-run" in lines[0]:
            shown = []
            for line in lines[1:]:
                if line.strip() == "...":
                    break
                shown.append(line)
            out.append((lines[0][2:], shown))
    return out


@pytest.mark.parametrize("command,shown", shown_dry_runs(), ids=lambda x: x if isinstance(x, str) else "")
def test_shown_dry_runs_print_what_the_readme_shows(command, shown, tmp_path):
    proc = run(command, tmp_path)
    assert_ok(proc)
    printed = (proc.stderr + proc.stdout).replace(sys.executable, "python").splitlines()
    for line in shown:
        line = line.removesuffix(" ...")
        assert any(p.startswith(line) for p in printed), f"README shows {line!r}; the command printed:\n" + \
            "\n".join(printed)


def test_readme_names_every_command():
    from launch.cli import app

    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    listed = section("Commands")
    for name in names:
        assert f"distrain {name}" in listed, f"`distrain {name}` is missing from the README's command list"
