"""The architecture holds: import-linter's contracts (pyproject.toml, [tool.importlinter]) on the real tree,
a contract broken on purpose fails, and the launcher's modules import no torch when they are loaded."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("launch", "slurm", "distrib")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_import_contracts_are_kept():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BROKEN" not in proc.stdout and "0 broken" in proc.stdout


def _copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    shutil.copy(REPO / "pyproject.toml", root)
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


BREAKS = {  # a one-line change that breaks one contract -> words of the contract that must be reported broken
    "distrib/paths.py": ("from launch import topology", "never imports the launcher"),
    "slurm/submit.py": ("import torch", "slurm never imports"),
    "distrib/model.py": ("from distrib.tools import export", "no import cycles"),
    "distrib/data/layout.py": ("def f():\n    import torch", "torch-free"),
    "launch/status.py": ("def f():\n    from distrib import model", "launch reaches torch only"),
    "distrib/checkpoint.py": ("def f():\n    from distrib import train", "nothing imports train.py"),
}


@pytest.mark.parametrize("path", BREAKS)
def test_a_contract_broken_on_purpose_fails(tmp_path, path):
    root = _copy_tree(tmp_path)
    line, contract = BREAKS[path]
    with open(root / path, "a") as fh:
        fh.write(f"\n\n{line}\n")
    proc = lint_imports(root)
    assert proc.returncode != 0, proc.stdout
    broken = proc.stdout[proc.stdout.index("Broken contracts"):]
    assert contract in broken, proc.stdout


def test_loading_the_launcher_and_slurm_imports_no_torch():
    modules = sorted(f"{p.parent.name}.{p.stem}" for package in ("launch", "slurm")
                     for p in (REPO / package).glob("*.py") if p.stem != "__main__")
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'numpy'))\n"
            "assert not loaded, loaded[:5]")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_the_suites_chains_and_module_runs_each_stay_in_one_xdist_worker(request):
    """Under `-n 2 --dist loadgroup` (the README's test command) the SLURM tests share one cluster and the
    test hosts one set of addresses, and some modules extend one trained run test by test: each such group
    must run in one worker, which xdist does only for tests whose id carries the group ("@slurm")."""
    import os

    from conftest import ONE_WORKER_MODULES

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # one process: everything is in one worker
    grouped = [item for item in request.session.items
               if item.module.__name__ in ONE_WORKER_MODULES | {"test_slurm", "test_network"}]
    assert all("@" in item.nodeid for item in grouped), [i.nodeid for i in grouped if "@" not in i.nodeid]
