"""A bounded drop-oldest hand-off between a ROS callback and a worker thread.

The callback must never block the executor and memory must not grow when the worker is slow
(the teacher model on a CPU is): ``put`` always returns at once, evicting the oldest item
when full and counting it; the worker takes the oldest remaining item.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    """Thread-safe FIFO of at most ``maxsize`` items that drops the oldest on overflow.

    Example:
        >>> q = DropOldestQueue(2)
        >>> for i in range(3):
        ...     _ = q.put(i)
        >>> q.get(timeout=0), q.dropped
        (1, 1)
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._items: deque[T] = deque()
        self._maxsize = maxsize
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: T) -> bool:
        """Enqueue ``item``; return False if an older item was dropped to make room."""
        with self._cond:
            evicted = len(self._items) >= self._maxsize
            if evicted:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()
            return not evicted

    def get(self, timeout: float | None = None) -> T | None:
        """Return the oldest item, waiting up to ``timeout`` s; None on timeout or close."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return None
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        """Wake every waiting ``get`` (they return None once the queue is empty)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
