"""lmcollapse as an installable package: the wheel that ``python -m build`` makes gives a working
``lmcollapse`` command outside the repository, with the pipelines inside it.

The wheel is built without network (``--no-isolation``, setuptools from the dev extra) and
installed with ``--no-deps`` into a fresh virtual environment, which borrows this environment's
dependencies (torch, transformers, ...) through a ``.pth`` path line, so the test needs no
registry either; the package itself comes from the wheel only (the command is run from a
temporary folder, and a path line does not activate this checkout's editable install).
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from helpers import REPO, write_generated_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The ``bin`` folder of a fresh virtual environment with the built wheel installed."""
    root = tmp_path_factory.mktemp("package")
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(root / "dist"),
                            str(REPO)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (root / "dist").glob("lmcollapse-*.whl")
    venv.EnvBuilder(with_pip=True).create(root / "env")
    bin_dir = root / "env" / "bin"
    env_site = next((root / "env" / "lib").glob("python*/site-packages"))
    (env_site / "borrowed-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n", encoding="utf-8")
    done = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return bin_dir


def run_installed(bin_dir: Path, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **(env or {})}
    return subprocess.run([str(bin_dir / "lmcollapse"), *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def test_the_installed_command_runs_outside_the_repository(installed, tmp_path):
    where = subprocess.run([str(installed / "python"), "-c", "import lmcollapse; print(lmcollapse.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert str(installed.parent) in where.stdout  # the wheel's copy, not this checkout
    helped = run_installed(installed, "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "pipelines" in helped.stdout
    listed = run_installed(installed, "pipelines", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "tiny " in listed.stdout and "shumailov-opt125m " in listed.stdout
    assert f"pipelines in {installed.parent}" in listed.stdout  # shipped inside the installed package
    shown = run_installed(installed, "config", "--pipeline", "tiny-paper", cwd=tmp_path)
    assert shown.returncode == 0 and "num_beams: 5" in shown.stdout


def test_a_dry_run_of_a_shipped_pipeline_from_a_temporary_folder(installed, tmp_path):
    corpus = write_generated_corpus(tmp_path / "corpus")
    planned = run_installed(installed, "run", "--dry-run", "--pipeline", "tiny", "--run", "runs/x", "--set",
                            f"data.corpus={corpus}", "data.train_split=train", "data.validation_split=null",
                            cwd=tmp_path, env={"LMCOLLAPSE_DATA_DIR": str(tmp_path / "no-data")})
    assert planned.returncode == 0, planned.stderr
    assert "pipeline tiny -> run runs/x" in planned.stdout and "cost on this device" in planned.stdout
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
