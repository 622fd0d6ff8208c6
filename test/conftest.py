"""Shared fixtures: small real ROS 2 bags written by the synthetic world."""

from __future__ import annotations

from pathlib import Path

import pytest

from cv_autolabel.tools.sim.run import SimConfig, simulate

SMALL = SimConfig(frames=16, width=320, height=240, seed=7, per_class=3, n_distractors=2,
                  scenes=2, pick_probability=1.0)


@pytest.fixture(scope="session")
def sim_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16-frame 320x240 mcap bag of the bin world (two scenes), shared by the session."""
    out = tmp_path_factory.mktemp("sim") / "bag"
    simulate(SMALL, out)
    return out


@pytest.fixture(scope="session")
def sim_bag_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same recording as ``sim_bag`` in sqlite3 storage."""
    out = tmp_path_factory.mktemp("sim_sqlite") / "bag"
    simulate(SimConfig(**{**SMALL.__dict__, "storage": "sqlite3"}), out)
    return out
