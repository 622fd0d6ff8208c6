"""Message factories: build ROS messages without knowing which ROS binding is underneath.

Components return messages to publish. On the robot those must be rclpy message instances;
in ``cv-autolabel replay`` and the tests they are rosbags dataclasses that serialise into a
bag. Both are built through a :class:`MessageFactory`, e.g.::

    header = factory.make("std_msgs/msg/Header", stamp=factory.stamp(ns), frame_id="cam")
    msg = factory.make("sensor_msgs/msg/Image", header=header, height=2, ...)

Fields not given take the ROS defaults (zero, empty string, empty sequence, default
sub-message), the same on both bindings.
"""

from __future__ import annotations

import array as stdarray
import importlib
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cv_autolabel.ros.typestore import typestore

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

_NUMPY_BASES = {
    "bool": np.bool_, "byte": np.uint8, "char": np.uint8,
    "int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16,
    "int32": np.int32, "uint32": np.uint32, "int64": np.int64, "uint64": np.uint64,
    "float32": np.float32, "float64": np.float64,
}


# Non-zero defaults that rosidl declares in .msg files (rosbags does not carry them).
_MESSAGE_DEFAULTS: dict[str, dict[str, Any]] = {"geometry_msgs/msg/Quaternion": {"w": 1.0}}


def _base_default(base: str) -> Any:
    if base in ("string", "wstring"):
        return ""
    if base == "bool":
        return False
    return 0.0 if base.startswith("float") else 0


class MessageFactory(Protocol):
    """Build ROS messages by type name (``pkg/msg/Type``)."""

    def make(self, typename: str, **fields: Any) -> Any:
        """Return a new message of ``typename``; omitted fields take their ROS defaults."""

    def stamp(self, nanoseconds: int) -> Any:
        """Return a ``builtin_interfaces/msg/Time`` for ``nanoseconds`` since the epoch."""


def split_nanoseconds(nanoseconds: int) -> tuple[int, int]:
    """Split integer nanoseconds into ROS ``(sec, nanosec)``.

    Example:
        >>> split_nanoseconds(1_500_000_000)
        (1, 500000000)
    """
    sec, nanosec = divmod(int(nanoseconds), 1_000_000_000)
    return sec, nanosec


def stamp_to_nanoseconds(stamp: Any) -> int:
    """Return integer nanoseconds of a ``builtin_interfaces/msg/Time`` (either binding)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def as_sequence_field(template: Any, values: np.ndarray) -> Any:
    """Return ``values`` in the container the binding uses for an unbounded numeric field.

    ``template`` is the field's current (default) value. rclpy keeps such sequences as
    ``array.array`` and rejects numpy arrays there; rosbags serialises numpy arrays only.
    """
    values = np.ascontiguousarray(values)
    if isinstance(template, stdarray.array):
        out = stdarray.array(template.typecode)
        out.frombytes(values.astype(np.dtype(template.typecode).newbyteorder("=")).tobytes())
        return out
    return values


class RosbagsMessageFactory:
    """Build rosbags message dataclasses, filling omitted fields with ROS defaults."""

    def __init__(self, store: Typestore | None = None) -> None:
        self.store = store or typestore()

    def make(self, typename: str, **fields: Any) -> Any:
        cls = self.store.types[typename]
        fields = {**_MESSAGE_DEFAULTS.get(typename, {}), **fields}
        _, fielddefs = self.store.fielddefs[typename]
        unknown = set(fields) - {name for name, _ in fielddefs}
        if unknown:
            msg = f"{typename} has no field(s) {sorted(unknown)}"
            raise TypeError(msg)
        values = {
            name: fields[name] if name in fields else self._default(desc)
            for name, desc in fielddefs
        }
        return cls(**values)

    def stamp(self, nanoseconds: int) -> Any:
        sec, nanosec = split_nanoseconds(nanoseconds)
        return self.make("builtin_interfaces/msg/Time", sec=sec, nanosec=nanosec)

    def _default(self, desc: tuple) -> Any:
        kind, arg = desc
        kind = getattr(kind, "name", kind)
        if kind == "BASE":
            return _base_default(arg[0])
        if kind == "NAME":
            return self.make(arg, **_MESSAGE_DEFAULTS.get(arg, {}))
        subdesc, length = arg
        subkind = getattr(subdesc[0], "name", subdesc[0])
        if subkind == "BASE" and subdesc[1][0] in _NUMPY_BASES:
            size = length if kind == "ARRAY" else 0
            return np.zeros(size, dtype=_NUMPY_BASES[subdesc[1][0]])
        if kind == "ARRAY":
            return [self._default(subdesc) for _ in range(length)]
        return []


class RclpyMessageFactory:
    """Build rclpy message instances (only usable where ROS 2 is installed)."""

    def make(self, typename: str, **fields: Any) -> Any:
        package, _, name = typename.split("/")
        cls = getattr(importlib.import_module(f"{package}.msg"), name)
        return cls(**fields)

    def stamp(self, nanoseconds: int) -> Any:
        sec, nanosec = split_nanoseconds(nanoseconds)
        return self.make("builtin_interfaces/msg/Time", sec=sec, nanosec=nanosec)
