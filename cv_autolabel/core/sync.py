"""Approximate time synchronisation of several message streams, free of any transport.

The pairing rule is the one of ROS 2's Python ``message_filters.ApproximateTimeSynchronizer``,
so the live node, ``cv-autolabel replay`` and bag extraction all produce the same RGB-D sets.
"""

from __future__ import annotations

import itertools
import math
import operator
import threading
from collections.abc import Callable, Iterable, Iterator

_NS_PER_S = 1_000_000_000


class ApproximateTimeSync:
    """Group messages from ``n_inputs`` streams whose stamps lie within ``slop`` of each other.

    Semantics (those of the Python ``message_filters.ApproximateTimeSynchronizer``):

    * Each input keeps a queue keyed by stamp; a second message with the same stamp on the same
      input replaces the first, and past ``queue_size`` the oldest stamp is evicted (even when
      it is the message just added).
    * Only the arriving message can complete a set. For every other input the queued stamps
      with ``|s - stamp| <= slop`` are candidates, nearest first (ties: earliest queued). The
      first combination in ``itertools.product`` order whose spread ``max - min`` is strictly
      ``< slop`` is emitted and its messages leave their queues; at most one set per ``add``.
    * Pairing is greedy on arrival: a set is emitted as soon as one exists, even if a closer
      partner would arrive later.

    A ROS 2 node feeds it from plain subscriptions (``add(i, stamp_ns, msg)`` in each callback)
    instead of using ``message_filters``, so the node and the offline tools share the exact
    same pairing. All methods are thread-safe; the callback runs under the lock, in emission
    order, and may call back into this object.

    Example:
        >>> sync = ApproximateTimeSync(2, slop_s=0.01)
        >>> sync.add(0, 1_000_000_000, "rgb") is None
        True
        >>> sync.add(1, 1_004_000_000, "depth")
        ('rgb', 'depth')
    """

    def __init__(self, n_inputs: int, *, queue_size: int = 10, slop_s: float = 0.1,
                 callback: Callable[..., None] | None = None) -> None:
        """Create an empty synchroniser.

        Args:
            n_inputs: number of streams, at least 2.
            queue_size: messages kept per input while waiting for partners, at least 1.
            slop_s: tolerance in seconds; a set is emitted when its stamp spread is below it.
            callback: called with one message per input, in input order, for every set.

        Raises:
            ValueError: if an argument is out of range.
        """
        self._slop_ns = _validate(n_inputs, queue_size, slop_s)
        self._queue_size = queue_size
        self._callback = callback
        self._queues: list[dict[int, object]] = [{} for _ in range(n_inputs)]
        self._evicted = [0] * n_inputs
        # Re-entrant so a callback may add() or clear() without deadlocking.
        self._lock = threading.RLock()

    @property
    def n_inputs(self) -> int:
        """Return the number of input streams."""
        return len(self._queues)

    @property
    def slop_ns(self) -> int:
        """Return the tolerance in integer nanoseconds."""
        return self._slop_ns

    @property
    def evicted(self) -> list[int]:
        """Return, per input, how many messages were dropped without ever being emitted.

        Counts queue overflow and same-stamp replacement, not :meth:`clear`.
        """
        with self._lock:
            return list(self._evicted)

    @property
    def pending(self) -> list[int]:
        """Return, per input, how many messages wait for partners."""
        with self._lock:
            return [len(queue) for queue in self._queues]

    def add(self, index: int, stamp_ns: int, msg: object) -> tuple[object, ...] | None:
        """Add msg on input `index`; return the synchronised tuple it completed, else None.

        The tuple holds one message per input, in input order, and is also passed to the
        callback.

        Raises:
            ValueError: if ``index`` is not an input of this synchroniser.
            TypeError: if ``stamp_ns`` is not an integer (a float would silently lose ns).
        """
        if not 0 <= index < len(self._queues):
            msg_ = f"input index must be in [0, {len(self._queues)}), got {index}"
            raise ValueError(msg_)
        stamp = operator.index(stamp_ns)
        with self._lock:
            self._store(index, stamp, msg)
            stamps = self._match(index, stamp)
            if stamps is None:
                return None
            matched = tuple(q.pop(s) for q, s in zip(self._queues, stamps, strict=True))
            if self._callback is not None:
                self._callback(*matched)
            return matched

    def clear(self) -> None:
        """Drop every queued message (e.g. when a bag loops and time jumps back).

        The ``evicted`` counters are kept: they are cumulative statistics.
        """
        with self._lock:
            for queue in self._queues:
                queue.clear()

    def _store(self, index: int, stamp: int, msg: object) -> None:
        queue = self._queues[index]
        if stamp in queue:
            self._evicted[index] += 1  # replaced before it could be emitted
        queue[stamp] = msg
        while len(queue) > self._queue_size:
            del queue[min(queue)]
            self._evicted[index] += 1

    def _match(self, index: int, stamp: int) -> list[int] | None:
        # A late message older than a full queue was evicted on arrival and cannot pair.
        if stamp not in self._queues[index]:
            return None
        candidates = self._candidates(index, stamp)
        if candidates is None:
            return None
        for combo in itertools.product(*candidates):
            stamps = [*combo[:index], stamp, *combo[index:]]
            # Strict, unlike the <= candidate filter: upstream compares Durations this way.
            if max(stamps) - min(stamps) < self._slop_ns:
                return stamps
        return None

    def _candidates(self, index: int, stamp: int) -> list[list[int]] | None:
        per_input = []
        for other, queue in enumerate(self._queues):
            if other == index:
                continue
            # Iterating the dict keeps queue order, so the stable sort breaks ties upstream's way.
            near = [s for s in queue if abs(s - stamp) <= self._slop_ns]
            if not near:
                return None
            near.sort(key=lambda s: abs(s - stamp))
            per_input.append(near)
        return per_input


def synchronize(stream: Iterable[tuple[int, int, object]], n_inputs: int, *,
                queue_size: int = 10, slop_s: float = 0.1) -> Iterator[tuple[object, ...]]:
    """Yield synchronised tuples from (index, stamp_ns, msg) in arrival order.

    Example:
        >>> events = [(0, 0, "rgb0"), (1, 2_000_000, "depth0"), (0, 33_000_000, "rgb1")]
        >>> list(synchronize(events, 2, slop_s=0.01))
        [('rgb0', 'depth0')]
    """
    sync = ApproximateTimeSync(n_inputs, queue_size=queue_size, slop_s=slop_s)
    for index, stamp_ns, msg in stream:
        matched = sync.add(index, stamp_ns, msg)
        if matched is not None:
            yield matched


def _validate(n_inputs: int, queue_size: int, slop_s: float) -> int:
    """Check the constructor arguments and return the slop in nanoseconds."""
    if n_inputs < 2:
        msg = f"n_inputs must be at least 2, got {n_inputs}"
        raise ValueError(msg)
    if queue_size < 1:
        msg = f"queue_size must be at least 1, got {queue_size}"
        raise ValueError(msg)
    if not (math.isfinite(slop_s) and slop_s >= 0):
        msg = f"slop_s must be finite and non-negative, got {slop_s}"
        raise ValueError(msg)
    # Truncated like rclpy.duration.Duration(seconds=slop), so stamps compare identically.
    slop_ns = int(slop_s * _NS_PER_S)
    if slop_ns == 0:
        # The spread test is strict, so a zero slop would never emit anything: say so now.
        msg = (f"slop_s must be at least 1 ns, got {slop_s}: the approximate policy emits "
               "only sets whose stamp spread is strictly below the slop")
        raise ValueError(msg)
    return slop_ns
