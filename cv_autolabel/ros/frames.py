"""Assemble synchronised colour, depth and camera_info messages into :class:`Frame` values.

The same functions serve the rclpy nodes (fed by their subscriptions) and the bag tools (fed
by :func:`iter_frames`), so a recording replays exactly as the robot saw it live.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cv_autolabel.core.sync import ApproximateTimeSync
from cv_autolabel.core.types import Frame
from cv_autolabel.errors import CvAutolabelError
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.ros.camera_info import intrinsics_from_camera_info
from cv_autolabel.ros.factory import stamp_to_nanoseconds
from cv_autolabel.ros.image import depth_to_metres, image_to_rgb
from cv_autolabel.ros.topics import CameraTopics


def frame_from_messages(color: Any, depth: Any | None = None, info: Any | None = None) -> Frame:
    """Return the Frame of one synchronised set (rclpy or rosbags messages).

    Raises:
        ImageEncodingError: an image is malformed or has an unsupported encoding.
        CameraInfoError: camera_info is uncalibrated or sized unlike the image.
        MessageError: depth is not aligned to (sized like) the colour image.
    """
    return Frame(
        rgb=image_to_rgb(color),
        depth=None if depth is None else depth_to_metres(depth),
        intrinsics=None if info is None else intrinsics_from_camera_info(info),
        stamp_ns=stamp_to_nanoseconds(color.header.stamp),
        frame_id=str(color.header.frame_id),
    )


@dataclass
class FrameStats:
    """What happened to the messages of one pass over a stream."""

    sets: int = 0
    frames: int = 0
    rejected: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def reject(self, err: CvAutolabelError) -> None:
        """Count a dropped set under its error type."""
        self.rejected += 1
        name = type(err).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


def iter_message_sets(bag: BagReader, topics: CameraTopics = CameraTopics(), *,
                      queue_size: int = 10, slop_s: float = 0.05,
                      ) -> Iterator[tuple[int, Any, Any | None, Any | None]]:
    """Yield ``(log_time_ns, color, depth, info)`` sets paired like message_filters would.

    Pairing uses each message's header stamp (as ApproximateTimeSynchronizer does), fed in
    recorded order; ``log_time_ns`` is when the set became complete in the recording, i.e.
    when a live node would have received it. Absent topics give None.
    """
    names = topics.names()
    index = {name: i for i, name in enumerate(names)}
    slots = [names.index(t) if t else None for t in (topics.color, topics.depth, topics.info)]
    sync = ApproximateTimeSync(max(2, len(names)), queue_size=queue_size, slop_s=slop_s)
    for m in bag.messages(names):
        stamp = stamp_to_nanoseconds(m.msg.header.stamp)
        matched = (m.msg,) if len(names) == 1 else sync.add(index[m.topic], stamp, m.msg)
        if matched is not None:
            color, depth, info = (None if s is None else matched[s] for s in slots)
            yield m.log_time_ns, color, depth, info


def iter_frames(bag: BagReader, topics: CameraTopics = CameraTopics(), *, queue_size: int = 10,
                slop_s: float = 0.05, stats: FrameStats | None = None,
                on_error: Callable[[CvAutolabelError, int], None] | None = None,
                ) -> Iterator[Frame]:
    """Yield Frames from a bag, pairing topics like ApproximateTimeSynchronizer would live.

    A set whose messages cannot be converted is dropped, counted in ``stats`` and reported
    to ``on_error(err, stamp_ns)``; iteration continues with the next set.
    """
    stats = stats if stats is not None else FrameStats()
    for _, color, depth, info in iter_message_sets(bag, topics, queue_size=queue_size,
                                                   slop_s=slop_s):
        stats.sets += 1
        try:
            frame = frame_from_messages(color, depth, info)
        except CvAutolabelError as err:
            stats.reject(err)
            if on_error:
                on_error(err, stamp_to_nanoseconds(color.header.stamp))
            continue
        stats.frames += 1
        yield frame
