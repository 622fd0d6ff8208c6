"""The ground-truth segmenter: the synthetic bag's truth as instances, compact in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cv_autolabel.errors import MessageError
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.ros.frames import iter_frames
from cv_autolabel.ros.ground_truth import GroundTruthSegmenter, iter_ground_truth


def test_instances_are_the_recorded_target_masks_and_stay_compact(sim_bag: Path) -> None:
    with BagReader(sim_bag) as bag:
        truths = list(iter_ground_truth(bag))
        frames = list(iter_frames(bag))
    seg = GroundTruthSegmenter(truths)
    assert seg.class_names == ("blue_can", "red_can")  # targets only, sorted
    raw = sum(gt.labels.nbytes for gt in truths)
    assert len(seg) == len(truths) and seg.stored_bytes < raw / 10
    for frame, gt in zip(frames, truths):
        inst = seg(frame)
        targets = {i for i, r in gt.instances.items() if r["class"] in seg.class_names}
        assert len(inst) == len({i for i in targets if (gt.labels == i).any()})
        for mask, name in zip(inst.masks, inst.names()):
            ids = np.unique(gt.labels[mask])
            assert len(ids) == 1 and gt.instances[int(ids[0])]["class"] == name
            assert mask.sum() == (gt.labels == ids[0]).sum()


def test_a_live_segmenter_keeps_only_the_newest_frames(sim_bag: Path) -> None:
    with BagReader(sim_bag) as bag:
        truths = list(iter_ground_truth(bag))
    seg = GroundTruthSegmenter([], ("red_can", "blue_can"), keep=3)
    for gt in truths:
        seg.add(gt)
    assert len(seg) == 3
    last = truths[-1]
    targets = {i for i, r in last.instances.items() if r["class"] in ("red_can", "blue_can")
               and (last.labels == i).any()}
    assert len(seg.instances(last.stamp_ns)) == len(targets) > 0
    with pytest.raises(MessageError, match="no ground truth recorded"):
        seg.instances(truths[0].stamp_ns)


def test_frames_come_paired_with_their_own_truth(sim_bag: Path) -> None:
    from cv_autolabel.ros.ground_truth import iter_frames_with_truth

    with BagReader(sim_bag) as bag:
        pairs = list(iter_frames_with_truth(bag))
        frames = list(iter_frames(bag))
    assert [f.stamp_ns for f, _ in pairs] == [f.stamp_ns for f in frames]
    assert all(gt.stamp_ns == f.stamp_ns and gt.labels.shape == f.rgb.shape[:2]
               for f, gt in pairs)
