"""Input `directory`: events from files dropped into a directory, one event per file.

A file holds one event as the Connector's webhook sends it, `{"trigger": "...", "data": {...}}`. The input
deletes a file only once the router stored its event, or kept the file as a dead letter: a router stopped
or killed before that reads the file again when it next starts. Writers create a file under a name that
starts with `.` and rename it into place once it is complete (a rename within one directory is atomic),
so no half-written file is read. Files are read in the order of their names.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

import anyio
import orjson
from anyio.abc import TaskStatus

from event_router.api import (
    DURATION_SCHEMA,
    Backoff,
    BatchStore,
    ConfigError,
    Event,
    EventSink,
    Input,
    Item,
    PluginContext,
    Rejected,
    SourceMessage,
    parse_duration,
    started_once,
)

CONFIG_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["path"],
    "properties": {
        # the directory, relative to router.toml's
        "path": {"type": "string", "minLength": 1},
        # names of the files read (fnmatch; default *.json)
        "pattern": {"type": "string", "minLength": 1},
        # the pause after reading what was there (default 1s); the core's duration schema: 1.5, "500ms", "1m"
        "poll_interval": DURATION_SCHEMA,
        # the longest pause between looks at a directory that is missing (default 30s)
        "recheck_max": DURATION_SCHEMA,
        # files per submit (default 100)
        "batch_size": {"type": "integer", "minimum": 1, "maximum": 10000},
    },
}

#: the shortest `poll_interval` and `recheck_max`: a pause of 0 would list the directory in a tight loop
MIN_PAUSE = 0.01

#: how long the spool remembers a file it stored: one read again at the next start after a crash (stored,
#: not deleted yet) within this time is recognised and not stored twice
REMEMBER_FILES = 86400.0


@dataclass(frozen=True, slots=True)
class File:
    name: str
    raw: bytes
    #: what identifies this file under its name: (inode, modification time, size), from the open file
    identity: tuple[int, int, int]

    @property
    def message_id(self) -> str:
        """The same for the same file read again (after a crash); another for a new file under the name."""
        return f"{self.name}:" + ":".join(map(str, self.identity))


class DirectoryInput(Input):
    """Reads one event per file from a directory and deletes each file once it is stored (`type = "directory"`)."""

    type_name = "directory"
    config_schema = CONFIG_SCHEMA

    def __init__(self, config: Mapping[str, Any], context: PluginContext) -> None:
        # Cheap, no I/O: `event-router check` constructs inputs too. Schema-checked already.
        super().__init__(config, context)
        self.path = context.config_dir / config["path"]
        self.pattern: str = config.get("pattern", "*.json")
        self.poll_interval = _pause(config, "poll_interval", 1.0)
        self.batch_size: int = config.get("batch_size", 100)
        # the router's back-off (doubling, full jitter, capped), for looking again at a directory that is not there
        self._recheck = Backoff.reconnect(_pause(config, "recheck_max", 30.0), initial=0.2)
        self._problem: str | None = "not started yet"
        #: unreadable files, warned about once each (they stay until someone fixes their permissions)
        self._unreadable: set[str] = set()

    def is_ready(self) -> bool:
        return self._problem is None

    def not_ready_reason(self) -> str | None:
        return self._problem

    def guarantee(self) -> str:
        # What `event-router check` says for this input on every route it feeds: the promise, given this config.
        return (
            "at least once: a file is deleted only once its event is stored; one read again after a crash "
            f"within {REMEMBER_FILES / 3600:g}h is recognised and not stored twice"
        )

    async def run(self, sink: EventSink, *, task_status: TaskStatus[None]) -> None:
        # Started once the directory can be read and written: from then on a dropped file is taken. While
        # it is missing the router runs, not ready, serving its other inputs.
        started = started_once(task_status)
        # holds what was read while the spool is full (the files stay), keeps what cannot be an event
        # as a dead letter, and calls back once each part is stored
        store = BatchStore(sink, self.log, self.batch_size)
        while True:
            problem = await anyio.to_thread.run_sync(self._check_directory)
            if problem is not None:
                if problem != self._problem:
                    self.log.warning("cannot read the directory", extra={"path": str(self.path), "error": problem})
                self._problem = problem
                await anyio.sleep(self._recheck.failed())
                continue
            if self._problem is not None:
                self.log.info("reading the directory", extra={"path": str(self.path), "pattern": self.pattern})
            self._problem = None
            self._recheck.healthy()
            started()
            files = await anyio.to_thread.run_sync(self._read_some)
            if files:
                await store.store([self._decode(f) for f in files], functools.partial(self._stored, files))
            if len(files) < self.batch_size:  # after a full batch, more may be waiting: read on at once
                await anyio.sleep(self.poll_interval)

    async def _stored(self, files: list[File], start: int, end: int) -> None:
        """The acknowledgement: `sink.submit` returned, files[start:end] are in the spool (or kept as dead
        letters). Only now may they go; a router killed before this reads them again."""
        await anyio.to_thread.run_sync(self._delete, files[start:end])

    def _check_directory(self) -> str | None:
        """Why the directory cannot be used now, or None."""
        if not self.path.is_dir():
            return f"{self.path} does not exist or is not a directory"
        if not os.access(self.path, os.R_OK | os.W_OK | os.X_OK):
            return f"{self.path}: no permission to list it and delete its files"
        return None

    def _read_some(self) -> list[File]:
        """Up to `batch_size` complete files, in the order of their names."""
        try:
            with os.scandir(self.path) as entries:
                names = sorted(
                    e.name
                    for e in entries
                    if not e.name.startswith(".") and fnmatch(e.name, self.pattern) and e.is_file()
                )
        except OSError:  # gone or unreadable since the check: the next check says why
            return []
        files: list[File] = []
        for name in names:
            if len(files) == self.batch_size:
                break
            try:
                with open(self.path / name, "rb") as f:
                    st = os.fstat(f.fileno())
                    raw = f.read()
            except FileNotFoundError:  # deleted meanwhile by someone else
                continue
            except OSError as exc:
                if name not in self._unreadable:
                    self._unreadable.add(name)
                    self.log.warning("cannot read a file; leaving it", extra={"file": name, "error": str(exc)})
                continue
            files.append(File(name, raw, _identity(st)))
        return files

    def _decode(self, file: File) -> Item:
        """An event, or a `Rejected` (kept as a dead letter with the file's bytes; never dropped)."""
        meta: dict[str, Any] = {"file": file.name}
        try:
            body = orjson.loads(file.raw)
        except orjson.JSONDecodeError as exc:
            return Rejected(file.raw, f"the file is not JSON (UTF-8): {exc}", None, meta)
        trigger = body.get("trigger") if isinstance(body, dict) else None
        if not isinstance(trigger, str) or not trigger:
            return Rejected(file.raw, 'the file is no JSON object with a "trigger" naming the event', None, meta)
        event = Event(trigger=trigger, data=body.get("data"), source=self.name, meta=meta, raw=file.raw)
        # stored only if this file was not stored before: `submit` answers "duplicate" and it is deleted
        event.message = SourceMessage(file.message_id, time.time() + REMEMBER_FILES)
        return event

    def _delete(self, files: list[File]) -> None:
        """Deletes each file that is still the one read. A writer may have renamed a new file onto the name
        since: that one is not stored yet, so it stays for the next poll."""
        for file in files:
            path = self.path / file.name
            try:
                # POSIX has no "unlink if still this inode": between this stat and the unlink a rename
                # can still slip in. Writers that give each file a new name (a timestamp, a uuid) never
                # replace one; this check narrows the window for those that do to these two calls.
                if _identity(os.stat(path)) == file.identity:
                    path.unlink()
            except FileNotFoundError:
                pass
            self._unreadable.discard(file.name)


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _pause(config: Mapping[str, Any], key: str, default: float) -> float:
    """A pause in seconds, at least `MIN_PAUSE` (the schema admits 0)."""
    seconds = parse_duration(config.get(key, default))
    if seconds < MIN_PAUSE:
        raise ConfigError(key, f"{config[key]!r} is too short: at least {MIN_PAUSE * 1000:g}ms")
    return seconds
