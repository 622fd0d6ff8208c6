"""DedupComponent: messages in, the original messages of novel frames out once stored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cv_autolabel.components.dedup import NOVEL_COLOR, NOVEL_DEPTH, NOVEL_INFO, DedupComponent
from cv_autolabel.core.dedup import Deduplicator
from cv_autolabel.core.embedders import create_embedder
from cv_autolabel.core.frame_archive import FrameArchive
from cv_autolabel.core.vectorstores import MemoryVectorStore
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.ros.factory import RosbagsMessageFactory
from cv_autolabel.ros.topics import CameraTopics
from cv_autolabel.core.sync import synchronize


def _component(tmp_path: Path, published: list) -> DedupComponent:
    embedder = create_embedder("thumbnail")
    store = MemoryVectorStore(collection="f", dim=embedder.dim, embedder_name=embedder.name)
    store.open()
    dedup = Deduplicator(embedder, store, FrameArchive(tmp_path / "frames"))
    return DedupComponent(dedup, publish=lambda k, m: published.append((k, m)),
                          factory=RosbagsMessageFactory(), source="test")


def _sets(bag_path: Path) -> list[tuple]:
    topics = CameraTopics()
    with BagReader(bag_path) as bag:
        stream = [(topics.names().index(m.topic),
                   m.msg.header.stamp.sec * 10**9 + m.msg.header.stamp.nanosec, m.msg)
                  for m in bag.messages(topics.names())]
    return list(synchronize(stream, 3, slop_s=0.05))


def test_novel_sets_are_forwarded_unchanged_after_storage(sim_bag: Path, tmp_path: Path) -> None:
    published: list = []
    component = _component(tmp_path, published)
    results = [component.on_messages(*s) for s in _sets(sim_bag)]
    component.dedup.close()
    novel = [s for s, r in zip(_sets(sim_bag), results) if r.novel]
    colors = [m for k, m in published if k == NOVEL_COLOR]
    assert len(colors) == len(novel) == component.dedup.stats.stored > 0
    for (color, depth, info), out in zip(novel, colors):
        assert np.array_equal(out.data, color.data) and out.header.stamp == color.header.stamp
    assert {k for k, _ in published} == {NOVEL_COLOR, NOVEL_DEPTH, NOVEL_INFO}


def test_malformed_set_is_counted_and_dropped(sim_bag: Path, tmp_path: Path) -> None:
    published: list = []
    component = _component(tmp_path, published)
    color, depth, info = _sets(sim_bag)[0]
    color.encoding = "bogus"
    assert component.on_messages(color, depth, info) is None
    color.encoding = "rgb8"
    depth.width = 7  # depth claims another size than colour: not aligned
    assert component.on_messages(color, depth, info) is None
    stats = json.loads(component.statistics_message().data)
    assert stats["rejected"] == {"ImageEncodingError": 1, "MessageError": 1}
    assert stats["frames_in"] == 0 and published == []
    component.dedup.close()
