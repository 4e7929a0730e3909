"""A finished run's output files on their way to runq: ``WorkerFileChunk`` messages, one at a time.

The session makes an ``Upload`` when an engine with ``files: true`` finishes a run, and sends its
chunks (at most 1 MiB each, read from disk as they go, so a file is never whole in memory) while
the link has room; the run's ``WorkerFinishedRun`` goes after the last one.  After a reconnect
that keeps the run, the upload starts over (runq truncates a file sent again from offset 0).
No sockets here.
"""
from __future__ import annotations

import base64

from simx import limits, protocol
from runq.files import UploadRefused, check_name

from .engines import outputs


class UploadError(Exception):
    """The files cannot be sent (a bad name, a file gone); the run fails with this message."""


class Upload:
    def __init__(self, key: tuple[int, int, int], workdir: outputs.WorkDir, manifest, chunk: int = limits.FILE_CHUNK):
        if not isinstance(manifest, list):
            raise UploadError("the engine's result lists no files")
        for entry in manifest:
            try:
                check_name(entry["name"])
            except UploadRefused as exc:
                raise UploadError(f"{exc} (only files directly in out/ are uploaded; "
                                  "subdirectories of out/ are not)") from None
        self.key, self.workdir, self.chunk = tuple(key), workdir, min(chunk, limits.FILE_CHUNK)
        self.entries = [(entry["name"], entry["size"]) for entry in manifest]
        self.sent = 0   # bytes sent so far (logs)
        self.restart()

    def restart(self) -> None:
        """From the first file again (a new connection: runq drops what it had of a file sent anew)."""
        self.index, self.offset = 0, 0

    @property
    def done(self) -> bool:
        return self.index >= len(self.entries)

    def next_message(self, worker_id: int) -> dict | None:
        """The next WorkerFileChunk, or None once every file has been sent."""
        if self.done:
            return None
        name, size = self.entries[self.index]
        try:
            with open(self.workdir.file(name), "rb") as f:
                f.seek(self.offset)
                piece = f.read(self.chunk)
        except (OSError, ValueError) as exc:
            raise UploadError(f"cannot read output file {name!r}: {exc}") from None
        last = not piece or self.offset + len(piece) >= size
        msg = protocol.message("WorkerFileChunk", worker_id=worker_id, batch_id=self.key[0],
                               batch_index=self.key[1], attempt=self.key[2], name=name, offset=self.offset,
                               data=base64.b64encode(piece).decode("ascii"), last=last)
        self.sent += len(piece)
        if last:
            self.index, self.offset = self.index + 1, 0
        else:
            self.offset += len(piece)
        return msg

    def close(self) -> None:
        self.workdir.remove()
