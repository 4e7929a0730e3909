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

from .engines import outputs
from .job import Job, run_name


class UploadError(Exception):
    """The files cannot be sent (a bad name, a file gone); the run fails with this message."""


class Upload:
    def __init__(self, key: tuple[int, int, int], workdir: outputs.WorkDir, manifest, chunk: int = limits.FILE_CHUNK):
        if not isinstance(manifest, list):
            raise UploadError("the engine's result lists no files")
        for entry in manifest:
            problem = limits.file_name_problem(entry["name"])
            if problem is not None:
                raise UploadError(f"{problem} (only files directly in out/ are uploaded; "
                                  "subdirectories of out/ are not)")
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


class Uploading:
    """Session's part in output files: an ``Upload`` when an engine with files finishes a run, its
    chunks while the link has room, then the run's report.  Mixed into ``Session``, whose state it
    uses (job, upload, upload_report, online, worker_id) and whose ``send``, ``_ended``."""

    def _start_upload(self, job: Job, fields: dict) -> bool:
        """Begin sending a finished run's files (engines with files: true); False when it has none."""
        take = getattr(self.engine, "take_outputs", None)
        workdir = take(job.key) if take is not None else None
        if workdir is None:
            return False
        data = fields.get("data")
        try:
            self.upload = Upload(job.key, workdir, data.get("files") if isinstance(data, dict) else None)
        except UploadError as exc:
            workdir.remove()
            self.upload_report = ("WorkerFailedRun", {"message": f"output files: {exc}"})
            return False
        self.upload_report = ("WorkerFinishedRun", fields)
        self.log.debug("run %s finished; sending its %d files", run_name(job.key), len(self.upload.entries))
        return True

    def send_upload(self, now: float | None = None) -> bool:
        """Send the next chunk of the files being uploaded (the loop calls this while its link has
        room); after the last, the run's finished report.  False when nothing more is to be sent.
        Without ``now``, the run's time (for the summary) ends at its start."""
        upload, job = self.upload, self.job
        if upload is None or job is None or not self.online:
            return False
        now = job.started if now is None else now
        try:
            msg = upload.next_message(self.worker_id)
        except UploadError as exc:
            self._drop_upload()
            self._ended(job, "WorkerFailedRun", {"message": f"output files: {exc}"}, now)
            return False
        if msg is not None:
            self.send(msg)
            return True
        mtype, fields = self.upload_report
        self.log.debug("run %s: %d bytes of files sent", run_name(job.key), upload.sent)
        self._drop_upload()
        self._ended(job, mtype, fields, now)
        return False

    def _drop_upload(self) -> None:
        if self.upload is not None:
            self.upload.close()
        self.upload = self.upload_report = None

    def _abandon_upload(self, reason: str, now: float) -> None:
        """runq took the run back while its files were on their way: report it aborted."""
        job = self.job
        self._drop_upload()
        self._ended(job, "WorkerAbortedRun", {"message": reason}, now)
