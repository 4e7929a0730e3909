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
MAX_RUN_BYTES = limits.MAX_RUN_FILES_BYTES  # per run [100 MiB], conf runq.files_max_run
MAX_FILES = limits.MAX_RUN_FILES
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


class DiskStorage:
    """Where the files are: ``<root>/<batch_id>/<batch_index>/<attempt>/<name>``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _dir(self, key) -> Path:
        return self.root / str(key[0]) / str(key[1]) / str(key[2])

    def put(self, key, name: str, offset: int, data: bytes, sync: bool) -> None:
        path = self._dir(key) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "r+b" if offset else "wb") as f:
            f.seek(offset)
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())

    def stat(self, key, name: str) -> tuple[int | None, str | None]:
        path = self._dir(key) / name
        if not path.is_file():
            return None, None
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while piece := f.read(CHUNK):
                digest.update(piece)
        return path.stat().st_size, digest.hexdigest()

    def get(self, key, name: str, offset: int, size: int) -> bytes:
        with open(self._dir(key) / name, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def remove(self, key, name: str | None = None) -> None:
        if name is None:
            shutil.rmtree(self._dir(key), ignore_errors=True)
        else:
            (self._dir(key) / name).unlink(missing_ok=True)

    def keep_only(self, key) -> None:
        """Remove the files of the run's other attempts."""
        parent = self._dir(key).parent
        for other in parent.iterdir() if parent.is_dir() else ():
            if other.name != str(key[2]):
                shutil.rmtree(other, ignore_errors=True)

    def batch_ids(self) -> list[int]:
        return [int(c.name) for c in self.root.iterdir() if c.name.isdigit()] if self.root.is_dir() else []

    def remove_batch(self, batch_id: int) -> None:
        shutil.rmtree(self.root / str(batch_id), ignore_errors=True)


class MemoryStorage:
    """The same in memory (tests of the core): (batch, index, attempt) -> name -> bytes."""

    def __init__(self):
        self.files: dict[tuple, dict[str, bytearray]] = {}

    def put(self, key, name: str, offset: int, data: bytes, sync: bool) -> None:
        f = self.files.setdefault(tuple(key), {}).setdefault(name, bytearray())
        if offset == 0:
            f.clear()
        f[offset:offset + len(data)] = data

    def stat(self, key, name: str) -> tuple[int | None, str | None]:
        f = self.files.get(tuple(key), {}).get(name)
        return (None, None) if f is None else (len(f), hashlib.sha256(f).hexdigest())

    def get(self, key, name: str, offset: int, size: int) -> bytes:
        f = self.files.get(tuple(key), {}).get(name)
        if f is None:
            raise FileNotFoundError(name)
        return bytes(f[offset:offset + size])

    def remove(self, key, name: str | None = None) -> None:
        if name is None:
            self.files.pop(tuple(key), None)
        else:
            self.files.get(tuple(key), {}).pop(name, None)

    def keep_only(self, key) -> None:
        for other in [k for k in self.files if k[:2] == tuple(key[:2]) and k != tuple(key)]:
            del self.files[other]

    def batch_ids(self) -> list[int]:
        return sorted({k[0] for k in self.files})

    def remove_batch(self, batch_id: int) -> None:
        for k in [k for k in self.files if k[0] == batch_id]:
            del self.files[k]


class Files:
    """Uploads checked against their manifest, over a storage (``DiskStorage`` under `root`, or
    ``MemoryStorage`` with root ``"memory"``)."""

    def __init__(self, root, max_run_bytes: int = MAX_RUN_BYTES):
        if root == "memory":
            self.root, self.storage = "memory", MemoryStorage()
        else:
            self.root = Path(root) if root is not None else None
            self.storage = DiskStorage(self.root) if self.root is not None else None
        self.max_run_bytes = max_run_bytes
        self.incoming: dict[tuple[int, int, int], dict[str, _Incoming]] = {}

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
        try:
            self.storage.put(key, name, offset, data, sync=bool(msg["last"]))   # durable before the ack
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
        for name in [n for n in files if n not in listed]:
            self.storage.remove(key, name)
        if key[2] > 1:   # earlier attempts' leftovers of this run
            self.storage.keep_only(key)

    def _on_disk(self, key, name: str) -> tuple[int | None, str | None]:
        return self.storage.stat(key, name) if self.root is not None else (None, None)

    def discard(self, key: tuple[int, int, int]) -> None:
        """Forget an attempt's upload and remove its files (it failed, or was refused)."""
        self.incoming.pop(key, None)
        if self.root is not None:
            self.storage.remove(key)

    # ---- serving and retention
    def read(self, key: tuple[int, int, int], name: str, offset: int, size: int = READ_CHUNK) -> bytes:
        """Up to ``size`` bytes of a stored file from ``offset`` (FileNotFoundError if absent)."""
        if self.root is None:
            raise FileNotFoundError(name)
        return self.storage.get(key, check_name(name), offset, size)

    def purge_batches(self, batch_ids) -> None:
        """Remove the files of batches the store purged (retention)."""
        if self.root is None:
            return
        for batch_id in batch_ids:
            self.storage.remove_batch(int(batch_id))

    def purge(self, exists) -> int:
        """Remove the directories of batches for which ``exists(batch_id)`` is false; how many
        (at start-up: files left by a purge that did not finish)."""
        if self.root is None:
            return 0
        gone = [b for b in self.storage.batch_ids() if not exists(b)]
        for batch_id in gone:
            self.storage.remove_batch(batch_id)
        return len(gone)
