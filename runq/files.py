"""A run's output files on runq's side: received in chunks, checked, kept, served, purged.

Layout: ``<files_dir>/<batch_id>/<batch_index>/<attempt>/<name>``; ``files_dir`` is conf
``runq.files_dir`` (default ``var/files``; a shared directory works the same).  A worker uploads a
finished run's files as ``WorkerFileChunk`` messages *before* its ``WorkerFinishedRun``; each chunk
is written to disk as it arrives (nothing whole in memory), with a running sha256 per file.  The
finished report's manifest (``data.files``: name, size, sha256) must then match what arrived, or
the attempt fails.  No I/O beyond the files directory; no sockets, no database.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import errno
import hashlib
import os
import shutil
from pathlib import Path

from simx import limits
from .core.errors import UploadRefused

CHUNK = limits.FILE_CHUNK                # largest chunk a worker may send, decoded [1 MiB]
MAX_CHUNK_TEXT = 4 * ((CHUNK + 2) // 3)  # the same, base64
MAX_RUN_BYTES = 100 * 1024 * 1024        # per run [100 MiB], conf runq.files_max_run
MAX_FILES = 10_000
READ_CHUNK = 512 * 1024                  # bytes per RunFile reply (base64 grows it by a third)


def check_name(name) -> str:
    """A file name as it may travel and be stored (simx/limits.py file_name_problem)."""
    problem = limits.file_name_problem(name)
    if problem is not None:
        raise UploadRefused(problem)
    return name


@dataclasses.dataclass
class _Incoming:
    size: int = 0
    digest: object = dataclasses.field(default_factory=hashlib.sha256)
    complete: bool = False


class Files:
    def __init__(self, root: Path | None, max_run_bytes: int = MAX_RUN_BYTES):
        self.root = Path(root) if root is not None else None
        self.max_run_bytes = max_run_bytes
        self.incoming: dict[tuple[int, int, int], dict[str, _Incoming]] = {}

    def _dir(self, key) -> Path:
        return self.root / str(key[0]) / str(key[1]) / str(key[2])

    # ---- upload
    def write(self, key: tuple[int, int, int], msg: dict) -> None:
        """Take one WorkerFileChunk of run ``key`` (the current attempt; the caller checked)."""
        if self.root is None:
            raise UploadRefused("runq has no files directory (conf runq.files_dir)")
        name, offset, text = check_name(msg["name"]), msg["offset"], msg["data"]
        if len(text) > MAX_CHUNK_TEXT:
            raise UploadRefused(f"a chunk of {name!r} is larger than {CHUNK} bytes")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise UploadRefused(f"a chunk of {name!r} is not base64") from None
        if len(data) > CHUNK:
            raise UploadRefused(f"a chunk of {name!r} is larger than {CHUNK} bytes")
        if key not in self.incoming:   # an earlier attempt of this run that never finished
            for old in [k for k in self.incoming if k[:2] == key[:2]]:
                self.discard(old)
        files = self.incoming.setdefault(key, {})
        entry = files.get(name)
        if offset == 0:   # a file (re)starts: after a reconnect the worker sends it again
            if entry is None and len(files) >= MAX_FILES:
                raise UploadRefused(f"more than {MAX_FILES} files")
            entry = files[name] = _Incoming()
        elif entry is None or entry.complete or offset != entry.size:
            have = "nothing" if entry is None else f"{entry.size} bytes{' (complete)' if entry.complete else ''}"
            raise UploadRefused(f"chunk of {name!r} at offset {offset}: runq has {have} of it")
        total = sum(f.size for f in files.values()) + len(data)
        if total > self.max_run_bytes:
            raise UploadRefused(f"the run's files pass the limit of {self.max_run_bytes} bytes per run "
                                "(conf runq.files_max_run)")
        path = self._dir(key) / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "r+b" if offset else "wb") as f:
                f.seek(offset)
                f.write(data)
                if msg["last"]:
                    f.flush()
                    os.fsync(f.fileno())   # durable before the finished report can be acked
        except OSError as exc:
            why = "runq's files directory is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else \
                "runq cannot write the file"
            raise UploadRefused(f"{why}: {name!r}: {exc.strerror or exc} ({self.root})") from None
        entry.size += len(data)
        entry.digest.update(data)
        entry.complete = bool(msg["last"])

    def complete(self, key: tuple[int, int, int], manifest) -> None:
        """Check the finished report's manifest against what arrived (after a runq restart: what is
        on disk); UploadRefused names the first difference.  Files not listed are removed."""
        files = self.incoming.pop(key, {})
        if not isinstance(manifest, list) or len(manifest) > MAX_FILES or not all(
                isinstance(m, dict) and isinstance(m.get("size"), int) and isinstance(m.get("sha256"), str)
                for m in manifest):
            self.discard(key)
            raise UploadRefused("the result's files must be a list of {name, size, sha256}")
        listed = set()
        try:
            for m in manifest:
                name = check_name(m.get("name"))
                listed.add(name)
                entry = files.get(name)
                if entry is not None and entry.complete:
                    size, sha = entry.size, entry.digest.hexdigest()
                else:
                    size, sha = self._on_disk(key, name) if entry is None else (None, None)
                if size is None:
                    raise UploadRefused(f"file {name!r} is listed but was not uploaded (whole)")
                if size != m["size"] or sha != m["sha256"]:
                    raise UploadRefused(f"file {name!r}: received {size} bytes with sha256 {sha}, "
                                        f"the manifest says {m['size']} bytes, {m['sha256']}")
        except UploadRefused:
            self.discard(key)
            raise
        extra = [n for n in files if n not in listed]
        for name in extra:
            (self._dir(key) / name).unlink(missing_ok=True)
        if key[2] > 1:   # earlier attempts' leftovers of this run
            for other in self._dir(key).parent.iterdir() if self._dir(key).parent.is_dir() else ():
                if other.name != str(key[2]):
                    shutil.rmtree(other, ignore_errors=True)

    def _on_disk(self, key, name: str) -> tuple[int | None, str | None]:
        path = self._dir(key) / name if self.root is not None else None
        if path is None or not path.is_file():
            return None, None
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while piece := f.read(CHUNK):
                digest.update(piece)
        return path.stat().st_size, digest.hexdigest()

    def discard(self, key: tuple[int, int, int]) -> None:
        """Forget an attempt's upload and remove its files (it failed, or was refused)."""
        self.incoming.pop(key, None)
        if self.root is not None:
            shutil.rmtree(self._dir(key), ignore_errors=True)

    # ---- serving and retention
    def read(self, key: tuple[int, int, int], name: str, offset: int, size: int = READ_CHUNK) -> bytes:
        """Up to ``size`` bytes of a stored file from ``offset`` (FileNotFoundError if absent)."""
        if self.root is None:
            raise FileNotFoundError(name)
        with open(self._dir(key) / check_name(name), "rb") as f:
            f.seek(offset)
            return f.read(size)

    def purge_batches(self, batch_ids) -> None:
        """Remove the files of batches the store purged (retention)."""
        if self.root is None:
            return
        for batch_id in batch_ids:
            shutil.rmtree(self.root / str(int(batch_id)), ignore_errors=True)

    def purge(self, exists) -> int:
        """Remove the directories of batches for which ``exists(batch_id)`` is false; how many
        (at start-up: files left by a purge that did not finish)."""
        if self.root is None or not self.root.is_dir():
            return 0
        gone = 0
        for child in self.root.iterdir():
            if child.name.isdigit() and not exists(int(child.name)):
                shutil.rmtree(child, ignore_errors=True)
                gone += 1
        return gone
