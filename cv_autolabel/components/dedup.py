"""Dedup over ROS messages, the same for the rclpy node and ``cv-autolabel`` bag replay.

In: synchronised colour (+ aligned depth + camera_info) messages. Out, once a novel frame is
durably stored: the *original* messages on ``novel/…`` (byte-identical to what the camera
sent, stamps unchanged, so the active-learning node pairs them exactly), and on request a
statistics message (``std_msgs/String`` holding JSON).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cv_autolabel.core.dedup import Deduplicator, DedupResult
from cv_autolabel.core.types import Frame
from cv_autolabel.errors import CvAutolabelError
from cv_autolabel.ros.factory import MessageFactory
from cv_autolabel.ros.frames import frame_from_messages

log = logging.getLogger(__name__)

NOVEL_COLOR = "novel/color/image_raw"
NOVEL_DEPTH = "novel/depth/image_raw"
NOVEL_INFO = "novel/color/camera_info"
STATISTICS = "statistics"

Publish = Callable[[str, Any], None]


class DedupComponent:
    """Feed message sets in, get novel message sets published out.

    Args:
        dedup: the engine (embedder, index, store, archive).
        publish: ``publish(output_key, msg)``; called from the persister thread.
        factory: builds the statistics message.
        source: recorded with every stored frame (bag path, robot name).
    """

    def __init__(self, dedup: Deduplicator, *, publish: Publish, factory: MessageFactory,
                 source: str = "") -> None:
        self.dedup, self.publish, self.factory, self.source = dedup, publish, factory, source
        self.rejected: dict[str, int] = {}
        self._lock = threading.Lock()
        dedup.on_stored = self._on_stored

    def on_messages(self, color: Any, depth: Any | None = None,
                    info: Any | None = None) -> DedupResult | None:
        """Judge one synchronised set; a malformed set is logged, counted and dropped."""
        try:
            frame = frame_from_messages(color, depth, info)
        except CvAutolabelError as err:
            with self._lock:
                name = type(err).__name__
                self.rejected[name] = self.rejected.get(name, 0) + 1
            log.warning("dedup: dropped a frame set: %s", err)
            return None
        return self.dedup.process(frame, source=self.source, context=(color, depth, info))

    def _on_stored(self, frame_id: int, frame: Frame, path: Path, context: Any) -> None:
        color, depth, info = context
        self.publish(NOVEL_COLOR, color)
        if depth is not None:
            self.publish(NOVEL_DEPTH, depth)
        if info is not None:
            self.publish(NOVEL_INFO, info)

    def statistics(self) -> dict[str, Any]:
        """Return the counters as a dict (frames, novel, stored, rejected, latencies)."""
        with self._lock:
            rejected = dict(self.rejected)
        return {**self.dedup.stats.as_dict(), "stored_total": len(self.dedup.index),
                "rejected": rejected}

    def statistics_message(self) -> Any:
        """Return the statistics as a ``std_msgs/String`` JSON message."""
        return self.factory.make("std_msgs/msg/String", data=json.dumps(self.statistics()))
