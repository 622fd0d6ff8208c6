"""Hot reload: switch to a sound new model, keep the old one when the new one is broken."""

from __future__ import annotations

from pathlib import Path

import pytest

from cv_autolabel.core.manifest import verify_manifest, write_manifest
from cv_autolabel.core.model_slot import ModelSlot, replace_symlink
from cv_autolabel.errors import ModelError


def _model(root: Path, name: str, text: str, *, manifest: bool = True) -> Path:
    d = root / name
    d.mkdir()
    (d / "model.bin").write_text(text)
    if manifest:
        write_manifest(d, dataset="v1")
    return d


def _loader(d: Path) -> str:
    text = (d / "model.bin").read_text()
    if text == "unloadable":
        raise RuntimeError("bad weights")
    return text


def test_reload_switches_and_rolls_back(tmp_path: Path) -> None:
    slot = ModelSlot(_model(tmp_path, "m1", "one"), _loader)
    assert slot.current == "one"
    good = _model(tmp_path, "m2", "two")
    assert slot.reload(good).success and slot.current == "two"

    corrupt = _model(tmp_path, "m3", "three")
    (corrupt / "model.bin").write_text("thr3e")  # same size, other bytes
    result = slot.reload(corrupt)
    assert not result.success and "checksum" in result.message and slot.current == "two"

    truncated = _model(tmp_path, "m4", "four")
    (truncated / "model.bin").write_text("fo")
    assert "incomplete copy" in slot.reload(truncated).message and slot.current == "two"

    assert "no manifest.json" in slot.reload(_model(tmp_path, "m5", "five",
                                                    manifest=False)).message
    assert "bad weights" in slot.reload(_model(tmp_path, "m6", "unloadable")).message
    assert "does not exist" in slot.reload(tmp_path / "nope").message
    assert slot.current == "two" and slot.reloads == 1 and slot.failed_reloads == 5


def test_watched_symlink_triggers_reload_once(tmp_path: Path) -> None:
    link = tmp_path / "current"
    link.symlink_to(_model(tmp_path, "m1", "one"))
    slot = ModelSlot(link, _loader)
    assert slot.poll() is None  # nothing changed
    replace_symlink(link, _model(tmp_path, "m2", "two"))
    assert slot.poll().success and slot.current == "two"
    broken = _model(tmp_path, "m3", "three")
    (broken / "model.bin").write_text("xxxxx")
    replace_symlink(link, broken)
    assert not slot.poll().success and slot.current == "two"
    assert slot.poll() is None  # the same broken model is not retried every poll


def test_first_load_must_succeed(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no manifest.json"):
        ModelSlot(_model(tmp_path, "m", "x", manifest=False), _loader)
    slot = ModelSlot(_model(tmp_path, "n", "y", manifest=False), _loader,
                     require_manifest=False)
    assert slot.current == "y"


def test_manifest_records_metadata(tmp_path: Path) -> None:
    d = _model(tmp_path, "m", "data")
    doc = verify_manifest(d)
    assert doc["dataset"] == "v1" and set(doc["files"]) == {"model.bin"}


def test_publish_re_points_the_link_only_to_a_verified_model(tmp_path: Path) -> None:
    from cv_autolabel.core.model_slot import publish_model

    link = tmp_path / "models" / "current"
    good, other = _model(tmp_path, "v1", "one"), _model(tmp_path, "v2", "two")
    assert publish_model(good, link)["files"]
    assert link.resolve() == good.resolve()
    unverified = _model(tmp_path, "v3", "three", manifest=False)  # a failed INT8 export
    with pytest.raises(ModelError, match="has no manifest.json"):
        publish_model(unverified, link)
    (other / "model.bin").write_text("tampered in transit")
    with pytest.raises(ModelError):
        publish_model(other, link)
    assert link.resolve() == good.resolve()  # still the last good model
    real = tmp_path / "real_dir"
    real.mkdir()
    with pytest.raises(ModelError, match="exists and is not a symlink"):
        publish_model(good, real)
    with pytest.raises(ModelError, match="no model directory"):
        publish_model(tmp_path / "nope", link)


def test_optional_slot_waits_for_the_first_model(tmp_path: Path) -> None:
    link = tmp_path / "current"
    with pytest.raises(ModelError, match="does not exist"):
        ModelSlot(link, _loader)
    slot = ModelSlot(link, _loader, optional=True)  # the robot before its first model
    assert slot.current is None and slot.model_dir is None and slot.poll() is None
    replace_symlink(link, _model(tmp_path, "m1", "one"))  # cv-autolabel publish
    assert slot.poll().success and slot.current == "one" and slot.reloads == 1

    broken = tmp_path / "broken"
    replace_symlink(broken, _model(tmp_path, "m2", "two"))
    (tmp_path / "m2" / "model.bin").write_text("tw0")
    waiting = ModelSlot(broken, _loader, optional=True)  # a broken first model: no crash
    assert waiting.current is None and waiting.poll() is None  # not retried until it changes
