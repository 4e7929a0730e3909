"""Wheels of simx's dependencies for a host's Python, built on the control machine and cached.

Worker hosts often have no internet, so `update` copies a wheelhouse and builds
the host's virtualenv from it offline.  The cache key is the hash of
pyproject.toml plus the host's Python version and machine, under
``~/.cache/simx/wheelhouse`` (SIMX_CACHE).  A host whose Python or machine differs
from the control machine's gets binary wheels downloaded for its version
(``pip download --only-binary``); the tests exercise only this machine's Python.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import platform
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

from .control import OpsError

PACKAGES = ("ops", "runq", "runweb", "simx", "worker")  # the code a host runs
CONF_FILES = ("conf/simx.yaml", "conf/engines.yaml")  # shipped when present; never hosts.yaml or secrets


def requirements(pyproject: Path) -> list[str]:
    return list(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"])


def key(pyproject: Path, version: str, machine: str) -> str:
    digest = hashlib.sha256(pyproject.read_bytes()).hexdigest()[:16]
    return f"{digest}-py{version}-{machine}"


def build(pyproject: Path, cache: Path, version: str, machine: str, python: str = sys.executable) -> Path:
    """The tarball of the wheelhouse for (pyproject, version, machine): from the cache, else built."""
    name = key(pyproject, version, machine)
    tarball = cache / "wheelhouse" / f"{name}.tar"
    if tarball.exists():
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with open(tarball.parent / ".lock", "w") as lock:  # one build at a time, across threads and processes
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        work = tarball.parent / f"{name}.building"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        reqs = requirements(pyproject)
        here = f"{sys.version_info[0]}.{sys.version_info[1]}"
        if version == here and machine == platform.machine():
            args = [python, "-m", "pip", "wheel", "-q", "-w", str(work), *reqs]
        else:
            args = [python, "-m", "pip", "download", "-q", "-d", str(work), "--only-binary=:all:",
                    "--python-version", version, "--implementation", "cp",
                    "--platform", f"manylinux2014_{machine}", *reqs]
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode != 0:
            raise OpsError(f"building the wheelhouse for Python {version} ({machine}) failed:\n"
                           f"{done.stderr[-2000:]}")
        (work / "requirements.txt").write_text("\n".join(reqs) + "\n")
        tmp = tarball.with_suffix(".tmp")
        with tarfile.open(tmp, "w") as tar:
            tar.add(work, arcname="wheels")
        tmp.replace(tarball)
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def code_tarball(root: Path) -> bytes:
    """simx's code (from wherever the packages are imported) and the shipped conf files, as .tar.gz."""
    import importlib
    buf = io.BytesIO()

    def skip(info: tarfile.TarInfo):
        return None if "__pycache__" in info.name or info.name.endswith(".pyc") else info

    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for pkg in PACKAGES:
            tar.add(Path(importlib.import_module(pkg).__file__).parent, arcname=pkg, filter=skip)
        for rel in CONF_FILES:
            if (root / rel).is_file():
                tar.add(root / rel, arcname=rel)
    return buf.getvalue()


def pyproject_of(root: Path) -> Path:
    path = root / "pyproject.toml"
    if not path.is_file():
        raise OpsError(f"no pyproject.toml in {root}: set SIMX_ROOT to the simx directory")
    return path




