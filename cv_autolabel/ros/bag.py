"""Read and write real ROS 2 bags (sqlite3 or mcap) with rosbags, without ROS installed.

Reading tolerates damage: a bag whose messages stop decoding part way yields what could be
read and then stops, recording why in :attr:`BagReader.damage`. An mcap file cut short (the
recorder lost power, so no summary and often no metadata.yaml) is salvaged chunk by chunk
from its start. Anything else that cannot be opened raises
:class:`~cv_autolabel.errors.BagError`. Writing is atomic: the bag is built in
a hidden ``.<name>.partial`` folder and moved into place only once it is complete.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2 import ReaderError, StoragePlugin, Writer, WriterError
from rosbags.serde import SerdeError

from cv_autolabel.errors import BagError
from cv_autolabel.ros.typestore import typestore as default_typestore

if TYPE_CHECKING:
    from rosbags.interfaces import Connection
    from rosbags.typesys.store import Typestore

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
# Errors rosbags and its storage back ends raise on damaged files.
_READ_ERRORS = (AnyReaderError, ReaderError, SerdeError, sqlite3.DatabaseError, OSError,
                ValueError, KeyError, IndexError, AssertionError, EOFError)


@dataclass(frozen=True)
class BagMessage:
    """One deserialised message and the time it was recorded (bag log time, ns)."""

    topic: str
    msgtype: str
    log_time_ns: int
    msg: Any


class BagReader:
    """Iterate the messages of a ROS 2 bag directory (or a lone .mcap/.db3 file's folder).

    Example:
        >>> with BagReader("recording") as bag:          # doctest: +SKIP
        ...     for m in bag.messages(["/camera/camera/color/image_raw"]):
        ...         print(m.log_time_ns, m.msg.encoding)
    """

    def __init__(self, path: str | Path, *, typestore: Typestore | None = None) -> None:
        self.path = Path(path)
        self.damage: str | None = None
        self._typestore = typestore or default_typestore()
        self._reader: AnyReader | None = None
        self._salvage: McapSalvage | None = None

    def __enter__(self) -> BagReader:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Open the bag; raise BagError naming the path and the cause when it cannot."""
        if not self.path.exists():
            raise BagError(f"bag not found: {self.path}")
        mcaps = sorted(self.path.glob("*.mcap")) if self.path.is_dir() else []
        if self.path.is_file() or not (self.path / "metadata.yaml").exists():
            if len(mcaps) == 1:
                self._start_salvage(mcaps[0], "no metadata.yaml (recording not closed)")
                return
            raise BagError(f"{self.path} is not a ROS 2 bag directory (no metadata.yaml)")
        try:
            self._reader = AnyReader([self.path], default_typestore=self._typestore)
            self._reader.open()
        except _READ_ERRORS as err:
            self._reader = None
            if len(mcaps) == 1:
                self._start_salvage(mcaps[0], f"{type(err).__name__}: {err}")
                return
            raise BagError(f"cannot open bag {self.path}: {err}") from err

    def _start_salvage(self, mcap_file: Path, why: str) -> None:
        self._salvage = McapSalvage(mcap_file, self._typestore)
        self.damage = f"damaged mcap, reading what precedes the damage ({why})"

    def close(self) -> None:
        """Close the bag (idempotent)."""
        if self._reader is not None:
            try:
                self._reader.close()
            except _READ_ERRORS:
                pass
            self._reader = None

    @property
    def reader(self) -> AnyReader:
        """The underlying rosbags AnyReader (not available for a salvaged mcap)."""
        if self._reader is None:
            state = "damaged and read by salvage" if self._salvage else "not open"
            raise BagError(f"bag {self.path} is {state}")
        return self._reader

    @property
    def topics(self) -> dict[str, tuple[str, int]]:
        """Return ``{topic: (msgtype, message count)}``."""
        if self._salvage is not None:
            return self._salvage.topics()
        return {name: (info.msgtype or "", info.msgcount)
                for name, info in self.reader.topics.items()}

    def summary(self) -> dict[str, Any]:
        """Return message count, start time and duration (ns) of what is readable."""
        if self._salvage is not None:
            return self._salvage.summary()
        r = self.reader
        return {"messages": r.message_count, "start_ns": r.start_time if r.message_count else 0,
                "duration_ns": r.duration if r.message_count else 0}

    def check_topics(self, topics: Iterable[str]) -> list[str]:
        """Return ``topics`` as a list; raise BagError naming any the bag does not have."""
        wanted, have = list(topics), self.topics
        missing = [t for t in wanted if t not in have]
        if missing:
            listing = ", ".join(sorted(have)) or "none"
            why = f" ({self.damage})" if self.damage else ""
            raise BagError(f"bag {self.path} has no topic(s) {missing}; it has: {listing}{why}")
        return wanted

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
        """Yield messages of ``topics`` in log-time order, stopping cleanly at damage."""
        wanted = None if topics is None else set(self.check_topics(topics))
        if self._salvage is not None:
            yield from self._salvage.messages(wanted)
            return
        conns = [c for c in self.reader.connections if wanted is None or c.topic in wanted]
        raw = self.reader.messages(connections=conns)
        while True:
            try:
                conn, log_time, data = next(raw)
                msg = self.reader.deserialize(data, conn.msgtype)
            except StopIteration:
                return
            except _READ_ERRORS as err:
                self.damage = f"{type(err).__name__}: {err}"
                return
            yield BagMessage(conn.topic, conn.msgtype, log_time, msg)


class McapSalvage:
    """Stream the complete chunks of an mcap file that has no (valid) summary section."""

    def __init__(self, path: Path, store: Typestore) -> None:
        self.path, self.store = path, store
        self._scan: dict[str, Any] | None = None

    def _records(self) -> Iterator[tuple[Any, Any, Any]]:
        from mcap.exceptions import McapError  # noqa: PLC0415
        from mcap.records import Channel, Message, Schema  # noqa: PLC0415
        from mcap.stream_reader import StreamReader  # noqa: PLC0415

        schemas: dict[int, Any] = {}
        channels: dict[int, Any] = {}
        with open(self.path, "rb") as fh:
            try:
                for rec in StreamReader(fh, skip_magic=False, emit_chunks=False).records:
                    if isinstance(rec, Schema):
                        schemas[rec.id] = rec
                    elif isinstance(rec, Channel):
                        channels[rec.id] = rec
                    elif isinstance(rec, Message) and rec.channel_id in channels:
                        channel = channels[rec.channel_id]
                        yield channel, schemas.get(channel.schema_id), rec
            except (McapError, EOFError, ValueError, OSError):
                return  # the damaged tail: everything before it has been yielded

    def _ensure_type(self, schema: Any) -> None:
        if schema is None or schema.name in self.store.types:
            return
        from rosbags.typesys import get_types_from_msg  # noqa: PLC0415

        if schema.encoding == "ros2msg":
            self.store.register(get_types_from_msg(schema.data.decode(), schema.name))

    def messages(self, wanted: set[str] | None) -> Iterator[BagMessage]:
        for channel, schema, rec in self._records():
            if wanted is not None and channel.topic not in wanted:
                continue
            self._ensure_type(schema)
            msgtype = schema.name if schema else ""
            try:
                msg = self.store.deserialize_cdr(rec.data, msgtype)
            except _READ_ERRORS:
                return
            yield BagMessage(channel.topic, msgtype, rec.log_time, msg)

    def _scan_once(self) -> dict[str, Any]:
        if self._scan is None:
            topics: dict[str, list] = {}
            times = []
            for channel, schema, rec in self._records():
                entry = topics.setdefault(channel.topic, [schema.name if schema else "", 0])
                entry[1] += 1
                times.append(rec.log_time)
            self._scan = {"topics": {t: (ty, n) for t, (ty, n) in topics.items()},
                          "times": (min(times), max(times)) if times else (0, 0),
                          "count": len(times)}
        return self._scan

    def topics(self) -> dict[str, tuple[str, int]]:
        return dict(self._scan_once()["topics"])

    def summary(self) -> dict[str, Any]:
        scan = self._scan_once()
        start, end = scan["times"]
        return {"messages": scan["count"], "start_ns": start, "duration_ns": end - start}


class BagWriter:
    """Write messages to a new ROS 2 bag, creating one connection per topic on first use.

    The bag is written in ``.<name>.partial/`` and moved to ``path`` by :meth:`close`, so a
    crash never leaves a half-written bag under the final name.
    """

    def __init__(self, path: str | Path, *, storage: str = "mcap", overwrite: bool = False,
                 typestore: Typestore | None = None) -> None:
        if storage not in STORAGES:
            raise BagError(f"unknown bag storage {storage!r}; use one of {sorted(STORAGES)}")
        self.path = Path(path)
        # rosbags names the storage file after the bag directory, so the partial bag lives in
        # a hidden sibling folder under its final name and only the directory is moved.
        self.staging = self.path.with_name(f".{self.path.name}.partial")
        self.partial = self.staging / self.path.name
        self.storage = storage
        self.overwrite = overwrite
        self.typestore = typestore or default_typestore()
        self._writer: Writer | None = None
        self._connections: dict[str, Connection] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> BagWriter:
        self.open()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        """Create the partial bag directory; refuse to clobber an existing bag."""
        if self.path.exists() and not self.overwrite:
            raise BagError(f"{self.path} exists already (pass overwrite to replace it)")
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)
        try:
            self._writer = Writer(self.partial, version=8, storage_plugin=STORAGES[self.storage])
            self._writer.open()
        except (WriterError, OSError) as err:
            raise BagError(f"cannot create bag {self.path}: {err}") from err

    def write(self, topic: str, msgtype: str, msg: Any, log_time_ns: int) -> None:
        """Serialise ``msg`` (a rosbags message of ``msgtype``) onto ``topic``."""
        if self._writer is None:
            raise BagError(f"bag {self.path} is not open for writing")
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self._connections[topic] = conn
        elif conn.msgtype != msgtype:
            raise BagError(f"topic {topic} carries {conn.msgtype}, not {msgtype}")
        data = self.typestore.serialize_cdr(msg, msgtype)
        self._writer.write(conn, int(log_time_ns), data)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def close(self) -> None:
        """Finish the bag and move it to its final name."""
        if self._writer is None:
            return
        try:
            self._writer.close()
        except (WriterError, OSError) as err:
            raise BagError(f"cannot finish bag {self.path}: {err}") from err
        finally:
            self._writer = None
        if self.path.exists():
            shutil.rmtree(self.path)
        self.partial.rename(self.path)
        shutil.rmtree(self.staging, ignore_errors=True)

    def abort(self) -> None:
        """Drop the partial bag."""
        if self._writer is not None:
            try:
                self._writer.close()
            except (WriterError, OSError):
                pass
            self._writer = None
        shutil.rmtree(self.staging, ignore_errors=True)
