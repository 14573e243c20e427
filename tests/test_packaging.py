"""The package as users install it: a built wheel and ``pip install .`` (not editable) in a fresh
virtual environment carry every module the CLI needs, and the version is written in one place.

The fresh environments borrow this one's third-party packages through a ``.pth`` line (a path
added that way runs no ``.pth`` files of its own, so an editable install of random-ltd here
stays invisible there) and install random-ltd itself with ``--no-deps``."""
from __future__ import annotations

import email
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import tomllib

import random_ltd

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("src", "pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md")


def run(command: list, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{command} exited with {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}"
    return done


def source_copy(root: Path) -> Path:
    """The tracked sources only, so that building leaves nothing in the checkout."""
    copy = root / "source"
    copy.mkdir()
    for name in SOURCES:
        target = REPO / name
        if target.is_dir():
            shutil.copytree(target, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(target, copy / name)
    return copy


def fresh_env(folder: Path) -> Path:
    venv.EnvBuilder(with_pip=False).create(folder)
    python = folder / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], folder).stdout.strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def pip_install(python: Path, target: Path, cwd: Path) -> None:
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-build-isolation", "-q", target],
        cwd)


def check_installed(python: Path, cwd: Path) -> None:
    """random-ltd is found in the fresh environment (not this checkout), under its one version
    (found, not imported: importing would load torch, seconds on a busy machine)."""
    probe = ("import importlib.metadata as m, importlib.util as u; print(u.find_spec('random_ltd').origin); "
             "print(m.version('random-ltd'))")
    where, version = run([python, "-c", probe], cwd).stdout.split()
    assert Path(where).is_relative_to(python.parent.parent), where
    assert version == random_ltd.__version__


def check_cli(python: Path, cwd: Path) -> None:
    cli = python.parent / "random-ltd"
    assert run([cli, "--version"], cwd).stdout.strip() == f"random-ltd {random_ltd.__version__}"
    planned = run([cli, "plan", "--seq-len", "128", "--layers", "6", "--batch-size", "8", "--total-steps", "100",
                   "--start", "32", "--increment", "16", "--full-at", "0.7", "--json"], cwd).stdout
    assert json.loads(planned)["seq_len"] == 128


def test_the_version_is_written_once():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert f"## {random_ltd.__version__}" in (REPO / "CHANGELOG.md").read_text()


@pytest.mark.slow
def test_a_built_wheel_and_pip_install_dot_carry_everything_the_cli_needs(tmp_path):
    source = source_copy(tmp_path)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
         source], tmp_path)
    (wheel,) = (tmp_path / "dist").glob("random_ltd-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = email.message_from_bytes(archive.read(f"random_ltd-{random_ltd.__version__}.dist-info/METADATA"))
    modules = {str(p.relative_to(REPO / "src")) for p in (REPO / "src").rglob("*.py")}
    assert modules <= names and "random_ltd/py.typed" in names
    assert metadata["Version"] == random_ltd.__version__ and metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Author"] and metadata["Keywords"] and metadata.get_all("Project-URL")
    assert len(metadata.get_all("Classifier")) >= 5
    assert f"random_ltd-{random_ltd.__version__}.dist-info/licenses/LICENSE" in names
    from_wheel = fresh_env(tmp_path / "wheel-env")
    pip_install(from_wheel, wheel, tmp_path)
    check_installed(from_wheel, tmp_path)
    check_cli(from_wheel, tmp_path)
    from_source = fresh_env(tmp_path / "source-env")
    pip_install(from_source, source, tmp_path)  # pip install . (builds the same wheel, then installs it)
    check_installed(from_source, tmp_path)
