"""The callback-to-worker hand-off never blocks and never grows."""

from __future__ import annotations

import threading
import time

import pytest

from cv_autolabel.core.workqueue import DropOldestQueue


def test_drops_oldest_and_counts() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(3)
    results = [q.put(i) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert q.dropped == 2 and len(q) == 3
    assert [q.get(timeout=0) for _ in range(3)] == [2, 3, 4]
    assert q.get(timeout=0) is None


def test_put_never_blocks_while_the_worker_is_busy() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(2)
    started = time.perf_counter()
    for i in range(10_000):
        q.put(i)
    assert time.perf_counter() - started < 1.0
    assert len(q) == 2 and q.dropped == 9_998


def test_close_wakes_a_waiting_worker() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(1)
    got = []
    worker = threading.Thread(target=lambda: got.append(q.get()))
    worker.start()
    time.sleep(0.05)
    q.close()
    worker.join(timeout=2)
    assert not worker.is_alive() and got == [None]


def test_invalid_size() -> None:
    with pytest.raises(ValueError):
        DropOldestQueue(0)
