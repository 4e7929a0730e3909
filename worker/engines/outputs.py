"""A run's work directory and the files it leaves under ``out/``.

Only engines that declare ``files: true`` get one (``<root>/w<pid>/<batch>-<index>-<attempt>-<random>/``
with ``out/`` inside; ``w<pid>`` is the worker process's, and a worker starting removes those of
worker processes that no longer exist).  After the run, ``manifest()`` lists the regular files under out/ (name
relative to out/ with ``/`` separators, size, sha256); ``chunks(name)`` yields a file's bytes in
pieces for the upload over the worker's link (a later step wires it into the loop: upload, then
report the run finished, then ``remove()``).  Symbolic links are never followed or listed, so a
program cannot make the worker send a file from outside its directory.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from simx import limits
from simx.process import alive

CHUNK = limits.FILE_CHUNK
MAX_FILES_BYTES = limits.MAX_RUN_FILES_BYTES  # per run [100 MiB]
MAX_FILES = limits.MAX_RUN_FILES


class OutputsTooLarge(Exception):
    """The files under out/ pass the per-run limit."""


class WorkDir:
    def __init__(self, root: Path, batch_id: int, batch_index: int, attempt: int):
        root = Path(root)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f"{batch_id}-{batch_index}-{attempt}-", dir=root))
        self.out = self.path / "out"
        self.out.mkdir(mode=0o700)

    def manifest(self, limit: int = MAX_FILES_BYTES) -> list[dict]:
        """[{name, size, sha256}] of the regular files under out/, sorted by name."""
        files, total = [], 0
        for path, name in self._walk():
            size = path.lstat().st_size
            total += size
            if total > limit or len(files) >= MAX_FILES:
                raise OutputsTooLarge(f"files under out/ pass the limit of {limit} bytes or {MAX_FILES} files")
            files.append({"name": name, "size": size, "sha256": sha256_of(path)})
        return sorted(files, key=lambda f: f["name"])

    def chunks(self, name: str, size: int = CHUNK) -> Iterator[tuple[int, bytes]]:
        """(offset, bytes) pieces of one listed file, in order; the last piece may be short."""
        path = self.file(name)
        with open(path, "rb") as f:
            offset = 0
            while piece := f.read(size):
                yield offset, piece
                offset += len(piece)

    def file(self, name: str) -> Path:
        """The path of a listed file, refusing names that leave out/ or are not regular files."""
        path = (self.out / name)
        if ".." in Path(name).parts or Path(name).is_absolute() or not path.resolve().is_relative_to(
                self.out.resolve()):
            raise ValueError(f"file name {name!r} is outside out/")
        if not stat.S_ISREG(path.lstat().st_mode) or any(p.is_symlink() for p in path.parents
                                                          if p.is_relative_to(self.out)):
            raise ValueError(f"{name!r} is not a regular file under out/")
        return path

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def _walk(self):
        for dirpath, dirnames, filenames in os.walk(self.out, followlinks=False):
            dirnames.sort()
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                if stat.S_ISREG(path.lstat().st_mode):
                    yield path, path.relative_to(self.out).as_posix()


def process_root(root: Path, pid: int | None = None) -> Path:
    """This worker process's part of the work root, after removing the parts of dead processes
    (several workers share a host's root; a process that died took its runs with it)."""
    root = Path(root)
    pid = os.getpid() if pid is None else pid
    if root.is_dir():
        for child in root.iterdir():
            other = child.name[1:]
            if child.name.startswith("w") and other.isdigit() and int(other) != pid and not alive(int(other)):
                shutil.rmtree(child, ignore_errors=True)
    return root / f"w{pid}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(CHUNK):
            digest.update(piece)
    return digest.hexdigest()
