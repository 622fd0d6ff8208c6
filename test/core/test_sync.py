"""Behaviour of the approximate time synchroniser shared by the node, replay and bag extraction."""

from __future__ import annotations

import random
import threading

import pytest

from cv_autolabel.core.sync import ApproximateTimeSync, synchronize

COLOUR, DEPTH, INFO = 0, 1, 2


def ms(value: float) -> int:
    """Return ``value`` milliseconds in integer nanoseconds."""
    return round(value * 1_000_000)


def frame_stamp(k: int, hz: float = 30.0) -> int:
    """Return the stamp of frame ``k`` of a ``hz`` stream, in nanoseconds."""
    return round(k * 1_000_000_000 / hz)


def run(events: list[tuple[int, int]], n_inputs: int = 2, **kwargs: object) -> list[tuple]:
    """Feed ``(index, stamp_ns)`` events whose message is the event itself; return the sets."""
    return list(synchronize(((i, s, (i, s)) for i, s in events), n_inputs, **kwargs))


def stamps_of(sets: list[tuple]) -> list[tuple[int, ...]]:
    """Return the stamps of every emitted set (messages are ``(index, stamp)`` pairs)."""
    return [tuple(stamp for _, stamp in group) for group in sets]


@pytest.mark.parametrize("order", ["colour_first", "depth_first"])
@pytest.mark.parametrize(
    ("offset_ms", "paired"),
    [
        (0.0, True),  # identical stamps
        (5.0, True),
        (-5.0, True),
        (19.999999, True),  # just inside the slop
        (20.0, False),  # exactly the slop: a set needs a spread strictly below it
        (-20.0, False),
        (25.0, False),  # beyond the slop
    ],
)
def test_single_pair_within_slop(offset_ms: float, paired: bool, order: str) -> None:
    colour = (COLOUR, ms(1000))
    depth = (DEPTH, ms(1000 + offset_ms))
    events = [colour, depth] if order == "colour_first" else [depth, colour]
    sets = run(events, slop_s=0.02)
    assert sets == ([(colour, depth)] if paired else [])


def test_jittered_depth_pairs_every_colour_frame_once_with_its_own_depth() -> None:
    rng = random.Random(0)
    events, expected = [], set()
    for k in range(90):
        colour = (COLOUR, frame_stamp(k))
        depth = (DEPTH, frame_stamp(k) + ms(rng.uniform(-5, 5)))
        events += [colour, depth] if rng.random() < 0.5 else [depth, colour]
        expected.add((colour, depth))
    sets = run(events, slop_s=0.02)
    assert len(sets) == 90
    assert set(sets) == expected


def test_missing_depth_frame_drops_only_that_colour_frame() -> None:
    events = []
    for k in range(30):
        events.append((COLOUR, frame_stamp(k)))
        if k != 10:
            events.append((DEPTH, frame_stamp(k) + ms(3)))
    sets = run(events, slop_s=0.02)
    assert stamps_of(sets) == [(frame_stamp(k), frame_stamp(k) + ms(3))
                               for k in range(30) if k != 10]


def test_different_rates_emit_one_set_per_slowest_message_with_nearest_stamps() -> None:
    events = []
    for k in range(30):  # one second of colour + camera_info at 30 Hz, depth at 15 Hz
        events += [(COLOUR, frame_stamp(k)), (INFO, frame_stamp(k))]
        if k % 2 == 0:
            events.append((DEPTH, frame_stamp(k) + ms(2)))
    sets = run(events, n_inputs=3, slop_s=0.02)
    assert stamps_of(sets) == [(frame_stamp(k), frame_stamp(k) + ms(2), frame_stamp(k))
                               for k in range(0, 30, 2)]


def test_late_old_message_pairs_with_queued_partner_and_never_reemits() -> None:
    late = (DEPTH, frame_stamp(3))
    events = [(COLOUR, frame_stamp(k)) for k in range(10)]
    events += [(DEPTH, frame_stamp(k)) for k in range(10) if k != 3]
    sync = ApproximateTimeSync(2, queue_size=10, slop_s=0.02)
    on_time = [sync.add(i, s, (i, s)) for i, s in events]
    assert len([group for group in on_time if group is not None]) == 9

    assert sync.add(*late, late) == ((COLOUR, frame_stamp(3)), late)
    # A duplicate of an already-paired depth finds no colour left: it waits, unpaired.
    assert sync.add(DEPTH, frame_stamp(5), "dup") is None
    assert sync.pending == [0, 1]


def test_queue_overflow_evicts_oldest_and_counts_it() -> None:
    sync = ApproximateTimeSync(2, queue_size=3, slop_s=0.02)
    for k in range(5):
        assert sync.add(COLOUR, frame_stamp(k), f"c{k}") is None
    assert sync.evicted == [2, 0]
    assert sync.pending == [3, 0]
    assert sync.add(DEPTH, frame_stamp(0), "d0") is None  # its colour frame was evicted
    assert sync.add(DEPTH, frame_stamp(4), "d4") == ("c4", "d4")


def test_same_stamp_on_same_input_replaces_and_counts_the_first() -> None:
    sync = ApproximateTimeSync(2, slop_s=0.02)
    sync.add(COLOUR, ms(100), "first")
    sync.add(COLOUR, ms(100), "second")
    assert sync.add(DEPTH, ms(100), "depth") == ("second", "depth")
    assert sync.evicted == [1, 0]


def test_three_inputs_need_all_three_within_slop() -> None:
    sync = ApproximateTimeSync(3, slop_s=0.01)
    assert sync.add(COLOUR, ms(0), "c") is None
    assert sync.add(DEPTH, ms(4), "d") is None
    assert sync.add(INFO, ms(12), "far") is None  # 12 ms from colour
    assert sync.add(INFO, ms(-3), "i") == ("c", "d", "i")
    assert sync.pending == [0, 0, 1]


@pytest.mark.parametrize("seed", range(5))
def test_pairing_is_independent_of_arrival_order_when_frames_are_well_separated(
    seed: int,
) -> None:
    # Frames 33 ms apart with at most 5 ms jitter and a 10 ms slop: every stamp has exactly one
    # candidate, so any arrival order gives the same sets (the queue holds all of them).
    rng = random.Random(seed)
    events = []
    for k in range(20):
        events += [(COLOUR, frame_stamp(k)), (DEPTH, frame_stamp(k) + ms(rng.uniform(-5, 5)))]
    expected = {(events[2 * k], events[2 * k + 1]) for k in range(20)}
    rng.shuffle(events)
    assert set(run(events, queue_size=40, slop_s=0.01)) == expected


# Hand-computed cases checked against the Python message_filters.ApproximateTimeSynchronizer
# (ros2/message_filters, src/message_filters/__init__.py); stamps in ms.
UPSTREAM_CASES = [
    pytest.param(
        # Greedy on arrival: depth@15 pairs with colour@0 at once, although depth@1 (arriving
        # later) would be closer; depth@1 then has no colour left.
        2, 10, 0.02, [(0, 0), (1, 15), (1, 1)], [(0, 15)],
        id="greedy-first-valid-partner",
    ),
    pytest.param(
        # Candidates nearest first per input, combined in itertools.product order: (-5, 5)
        # has spread 10, not < 10; the next, (-5, -9), spread 9, wins over the tighter (6, 5).
        3, 10, 0.01, [(1, -5), (1, 6), (2, 5), (2, -9), (0, 0)], [(0, -5, -9)],
        id="product-order-not-tightest",
    ),
    pytest.param(
        # Two candidates equally near: the one queued first wins (stable sort over the queue).
        2, 10, 0.01, [(1, 5), (1, -5), (0, 0)], [(0, 5)],
        id="tie-earliest-queued-plus",
    ),
    pytest.param(
        2, 10, 0.01, [(1, -5), (1, 5), (0, 0)], [(0, -5)],
        id="tie-earliest-queued-minus",
    ),
    pytest.param(
        # A late message older than a full queue is evicted on arrival, so it cannot pair with
        # the exact match waiting on the other input.
        2, 2, 0.005, [(1, 0), (0, 10), (0, 20), (0, 0)], [],
        id="late-message-evicted-on-arrival",
    ),
    pytest.param(
        # Candidate filter is |delta| <= slop but the spread test is < slop: a partner exactly
        # one slop away is a candidate that never pairs; a nearer one arriving later does.
        2, 10, 0.01, [(1, 10), (0, 0), (1, 5)], [(0, 5)],
        id="exactly-slop-never-pairs",
    ),
    pytest.param(
        # Nearest partner first, not oldest: depth@4 takes colour@6, so the sets come out of
        # stamp order when depth@-2 then takes the older colour@0.
        2, 10, 0.01, [(0, 0), (0, 6), (1, 4), (1, -2)], [(6, 4), (0, -2)],
        id="nearest-not-oldest",
    ),
]


@pytest.mark.parametrize(("n_inputs", "queue_size", "slop_s", "events_ms", "expected_ms"),
                         UPSTREAM_CASES)
def test_matches_upstream_python_synchronizer(
    n_inputs: int, queue_size: int, slop_s: float, events_ms: list[tuple[int, float]],
    expected_ms: list[tuple[float, ...]],
) -> None:
    events = [(i, ms(s)) for i, s in events_ms]
    sets = run(events, n_inputs, queue_size=queue_size, slop_s=slop_s)
    assert stamps_of(sets) == [tuple(ms(s) for s in group) for group in expected_ms]


def test_callback_receives_the_returned_set() -> None:
    received = []
    sync = ApproximateTimeSync(2, slop_s=0.02, callback=lambda *msgs: received.append(msgs))
    sync.add(COLOUR, ms(0), "c")
    assert sync.add(DEPTH, ms(1), "d") == ("c", "d")
    assert received == [("c", "d")]


def test_clear_drops_queued_messages_but_keeps_statistics() -> None:
    sync = ApproximateTimeSync(2, queue_size=1, slop_s=0.02)
    sync.add(COLOUR, ms(0), "c0")
    sync.add(COLOUR, ms(100), "c1")
    sync.clear()
    assert sync.pending == [0, 0]
    assert sync.evicted == [1, 0]
    assert sync.add(DEPTH, ms(100), "d1") is None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_inputs": 1}, ValueError, "n_inputs"),
        ({"n_inputs": 2, "queue_size": 0}, ValueError, "queue_size"),
        ({"n_inputs": 2, "slop_s": -0.1}, ValueError, "slop_s"),
        ({"n_inputs": 2, "slop_s": float("nan")}, ValueError, "slop_s"),
        ({"n_inputs": 2, "slop_s": float("inf")}, ValueError, "slop_s"),
        ({"n_inputs": 2, "slop_s": 0.0}, ValueError, "strictly below"),
    ],
)
def test_invalid_construction_raises(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ApproximateTimeSync(**kwargs)


@pytest.mark.parametrize(
    ("index", "stamp", "error", "match"),
    [
        (-1, 0, ValueError, "index"),
        (2, 0, ValueError, "index"),
        (0, 1.5, TypeError, "integer"),
    ],
)
def test_invalid_add_raises(index: int, stamp: object, error: type[Exception],
                            match: str) -> None:
    with pytest.raises(error, match=match):
        ApproximateTimeSync(2).add(index, stamp, "msg")  # type: ignore[arg-type]


def test_concurrent_producers_emit_each_message_at_most_once() -> None:
    n = 2000
    emitted = []
    sync = ApproximateTimeSync(2, queue_size=50, slop_s=0.01, callback=lambda *m: emitted.append(m))

    def produce(index: int) -> None:
        for k in range(n):
            sync.add(index, frame_stamp(k), (index, k))

    threads = [threading.Thread(target=produce, args=(i,)) for i in (COLOUR, DEPTH)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flat = [msg for group in emitted for msg in group]
    assert len(flat) == len(set(flat))
    assert all(colour[1] == depth[1] for colour, depth in emitted)  # never cross-paired
    # Every message is accounted for: emitted, evicted or still waiting.
    assert [len(emitted) + e + p for e, p in zip(sync.evicted, sync.pending)] == [n, n]
