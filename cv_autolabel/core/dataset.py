"""Versioned, content-addressed labelled datasets: what training reads, reproducibly.

A version is a directory ``<root>/<version>/`` (``v0001``, ``v0002``, … increasing)::

    images/<sha256 first 16 hex>.<ext>   each distinct image once, named by its content
    annotations.json                     COCO: file_name "images/<hash>.<ext>", categories
                                         1-based in class order, segmentations as in the source
                                         (polygons, or RLE with iscrowd 1)
    manifest.json                        version, created (UTC), parents, source, class_names,
                                         annotations_sha256, per image {hash, file, width,
                                         height, source, file_name, stamp_ns, group}, and per
                                         class {instances, images}

A version is written in a staging directory and renamed into place, so a reader sees it
complete or not at all; it is never modified afterwards (``open_version`` checks every hash).

``group`` names what must not straddle train/val/test splits. Our flush names images
``<entry id:06d>_<stamp_ns>.<ext>``: frames of one source whose stamps chain within
``group_window_s`` of each other are one sequence, the group ``<source>@<first stamp_ns>``. An
explicit ``group`` (image key or ``attributes.group``, e.g. set in CVAT) wins over that; an image
with neither is a group of its own. When versions are merged, groups that share an image are
joined, so an image re-labelled in another source still drags its old neighbours along.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from cv_autolabel.core.coco import IMAGES_ARCDIR, read_coco_zip
from cv_autolabel.core.fsio import atomic_directory, write_bytes_atomic
from cv_autolabel.core.manifest import sha256_file
from cv_autolabel.errors import CocoError, DatasetError

MANIFEST = "manifest.json"
ANNOTATIONS = "annotations.json"
MANIFEST_VERSION = 1
#: Frames of one source closer in time than this belong to one sequence (group).
#: Novel frames closer than this in time belong to one continuous camera move. Dedup drops
#: every frame while the camera holds still, so a pause (usually > 0.5 s at 30 Hz) ends a
#: sequence; a longer window chains a whole recording into one group that cannot be split.
GROUP_WINDOW_S = 0.5
_HASH_CHARS = 16
_VERSION_RE = re.compile(r"^v(\d{4,})$")
_FLUSH_NAME_RE = re.compile(r"^(\d{6,})_(\d+)\.[A-Za-z0-9]+$")
_MANIFEST_KEYS = ("version", "class_names", "images", "annotations_sha256", "counts")


@dataclass(frozen=True)
class DatasetVersion:
    """One verified dataset version on disk.

    Attributes:
        path: the version directory.
        manifest: the parsed ``manifest.json``.
        coco: the parsed ``annotations.json``.
    """

    path: Path
    manifest: dict[str, Any]
    coco: dict[str, Any]

    @property
    def version(self) -> str:
        """Return the version name, e.g. ``v0003``."""
        return str(self.manifest["version"])

    @property
    def class_names(self) -> list[str]:
        """Return the class names; category id ``i + 1`` is ``class_names[i]``."""
        return list(self.manifest["class_names"])

    def image_path(self, image_hash: str) -> Path:
        """Return the file of the image with content hash ``image_hash``.

        Raises:
            DatasetError: no image of this version has that hash.
        """
        for record in self.manifest["images"]:
            if record["hash"] == image_hash:
                return self.path / record["file"]
        raise DatasetError(f"{self.path} has no image {image_hash}")


@dataclass
class _Item:
    """An image on its way into a version: bytes, provenance, annotations by class name."""

    data: bytes
    ext: str
    width: int
    height: int
    source: str
    file_name: str
    stamp_ns: int | None
    group: str | None
    annotations: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def hash(self) -> str:
        """Return the content hash the image is stored under."""
        return hashlib.sha256(self.data).hexdigest()[:_HASH_CHARS]


def create_version(root: Path, coco: dict[str, Any], image_bytes: Mapping[str, bytes], *,
                   source: str, class_names: Sequence[str] | None = None,
                   group_window_s: float = GROUP_WINDOW_S) -> DatasetVersion:
    """Store a COCO dataset and its images as the next version under ``root``.

    Args:
        root: the dataset root; created if missing.
        coco: COCO instances dict (images, annotations, categories).
        image_bytes: encoded image of each COCO ``file_name``.
        source: where the data came from (e.g. the zip path); prefixes derived groups.
        class_names: the class order (None: the categories' names in id order). Every
            category of ``coco`` must be among them.
        group_window_s: stamps closer than this (chained) form one sequence group.

    Returns:
        The new version, already verified.

    Raises:
        DatasetError: malformed COCO, a missing image, an unknown category, or a write error.
    """
    categories = _category_names(coco)
    names = list(class_names) if class_names is not None else [
        categories[k] for k in sorted(categories)]
    _check_class_names(names, categories.values())
    items = _items_from_coco(coco, image_bytes, categories, source)
    _assign_sequence_groups(items, source, group_window_s)
    return _write_version(Path(root), items, names, source=source, parents=[])


def version_from_zip(root: Path, zip_path: Path, *,
                     class_names: Sequence[str] | None = None) -> DatasetVersion:
    """Store a flush zip or a CVAT "COCO 1.0" export as the next version under ``root``.

    Raises:
        DatasetError: the zip is unreadable, not COCO, or lacks a listed image.
    """
    zip_path = Path(zip_path)
    try:
        coco = read_coco_zip(zip_path)
    except CocoError as err:
        raise DatasetError(str(err)) from err
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise DatasetError(f"{zip_path} holds no COCO instances dict")
    try:
        with zipfile.ZipFile(zip_path) as zf:
            images = {img["file_name"]: zf.read(f"{IMAGES_ARCDIR}/{img['file_name']}")
                      for img in coco["images"]}
    except (zipfile.BadZipFile, KeyError, OSError, TypeError) as err:
        raise DatasetError(f"cannot read images of {zip_path}: {err}") from err
    return create_version(root, coco, images, source=str(zip_path), class_names=class_names)


def open_version(path: Path) -> DatasetVersion:
    """Open a version, checking its manifest, annotation file and every image's hash.

    Raises:
        DatasetError: naming the first file that is missing, unreadable or altered.
    """
    path = Path(path)
    manifest = _read_json(path / MANIFEST)
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing:
        raise DatasetError(f"{path / MANIFEST} lacks {missing}")
    records = manifest["images"]
    if sha256_file(path / ANNOTATIONS) != manifest["annotations_sha256"]:
        raise DatasetError(f"{path / ANNOTATIONS} does not match its manifest checksum")
    for record in records:
        _check_image(path, record)
    coco = _read_json(path / ANNOTATIONS)
    listed = {img["file_name"] for img in coco.get("images", [])}
    if listed != {r["file"] for r in records}:
        raise DatasetError(f"{path}: annotations.json and manifest list different images")
    return DatasetVersion(path, manifest, coco)


def list_versions(root: Path) -> list[Path]:
    """Return the version directories under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := _VERSION_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def merge_versions(root: Path, versions: Iterable[DatasetVersion | Path]) -> DatasetVersion:
    """Store the union of several versions as the next version under ``root``.

    "Newest" is by ``created`` time (then version name). An image in several versions is
    stored once, with the annotations and record of the newest version holding it; class
    lists are unioned, oldest version first, and category ids remapped to the union.
    Groups that share an image are joined so the merged split cannot separate them.

    Raises:
        DatasetError: no versions given, or one fails verification.
    """
    opened = [v if isinstance(v, DatasetVersion) else open_version(v) for v in versions]
    if not opened:
        raise DatasetError("merge_versions needs at least one version")
    opened.sort(key=lambda v: (str(v.manifest.get("created", "")), v.version))
    names: list[str] = []
    for version in opened:
        names += [n for n in version.class_names if n not in names]
    items: dict[str, _Item] = {}
    aliases: list[tuple[str, str]] = []
    for version in opened:  # oldest first: a newer version overwrites the item
        for item in _items_from_version(version):
            if item.hash in items and items[item.hash].group != item.group:
                aliases.append((str(items[item.hash].group), str(item.group)))
            items[item.hash] = item
    _join_groups(list(items.values()), aliases)
    parents = [_parent_name(Path(root), v.path) for v in opened]
    return _write_version(Path(root), list(items.values()), names,
                          source="merge", parents=parents)


# --- reading a COCO dict ---------------------------------------------------------------------

def _category_names(coco: dict[str, Any]) -> dict[int, str]:
    try:
        return {int(c["id"]): str(c["name"]) for c in coco["categories"]}
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"COCO categories malformed: {err}") from err


def _check_class_names(names: Sequence[str], used: Iterable[str]) -> None:
    if not names or len(set(names)) != len(names):
        raise DatasetError(f"class_names must be non-empty and unique, got {list(names)}")
    unknown = sorted(set(used) - set(names))
    if unknown:
        raise DatasetError(f"COCO categories {unknown} are not among class_names {list(names)}")


def _items_from_coco(coco: dict[str, Any], image_bytes: Mapping[str, bytes],
                     categories: dict[int, str], source: str) -> list[_Item]:
    """Return one item per distinct image content, annotations attached by class name."""
    by_id: dict[int, _Item] = {}
    by_hash: dict[str, _Item] = {}
    try:
        for img in coco["images"]:
            item = _item_from_image(img, image_bytes, source)
            # the same content listed twice becomes one image carrying both annotation sets
            by_id[int(img["id"])] = by_hash.setdefault(item.hash, item)
        for ann in coco["annotations"]:
            owner = by_id.get(int(ann["image_id"]))
            name = categories.get(int(ann["category_id"]))
            if owner is None or name is None:
                raise DatasetError(f"annotation {ann.get('id')} has unknown image or category")
            owner.annotations.append((name, ann))
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"COCO dict malformed: {err!r}") from err
    return list(by_hash.values())


def _item_from_image(img: dict[str, Any], image_bytes: Mapping[str, bytes],
                     source: str) -> _Item:
    file_name = str(img["file_name"])
    if file_name not in image_bytes:
        raise DatasetError(f"no image bytes for COCO file_name {file_name!r}")
    base = PurePosixPath(file_name).name
    match = _FLUSH_NAME_RE.match(base)
    explicit = img.get("group", (img.get("attributes") or {}).get("group"))
    return _Item(data=bytes(image_bytes[file_name]), ext=PurePosixPath(base).suffix.lower(),
                 width=int(img["width"]), height=int(img["height"]), source=source,
                 file_name=file_name, stamp_ns=int(match.group(2)) if match else None,
                 group=str(explicit) if explicit not in (None, "") else None)


def _assign_sequence_groups(items: list[_Item], source: str, window_s: float) -> None:
    """Group stamped items into sequences (chained gaps <= window); the rest stand alone."""
    stamped = sorted((i for i in items if i.group is None and i.stamp_ns is not None),
                     key=lambda i: (i.stamp_ns, i.hash))
    window_ns = int(window_s * 1e9)
    first: int | None = None
    previous: int | None = None
    for item in stamped:
        assert item.stamp_ns is not None
        if previous is None or item.stamp_ns - previous > window_ns:
            first = item.stamp_ns
        item.group = f"{source}@{first}"
        previous = item.stamp_ns
    for item in items:
        if item.group is None:
            item.group = f"image:{item.hash}"


# --- merging ---------------------------------------------------------------------------------

def _items_from_version(version: DatasetVersion) -> list[_Item]:
    categories = {i + 1: n for i, n in enumerate(version.class_names)}
    records = {r["file"]: r for r in version.manifest["images"]}
    items: dict[int, _Item] = {}
    for img in version.coco["images"]:
        record = records[img["file_name"]]
        path = version.path / record["file"]
        items[int(img["id"])] = _Item(
            data=path.read_bytes(), ext=path.suffix, width=int(record["width"]),
            height=int(record["height"]), source=record["source"],
            file_name=record["file_name"], stamp_ns=record.get("stamp_ns"),
            group=record["group"])
    for ann in version.coco["annotations"]:
        items[int(ann["image_id"])].annotations.append((categories[ann["category_id"]], ann))
    return list(items.values())


def _join_groups(items: list[_Item], aliases: list[tuple[str, str]]) -> None:
    """Rename groups linked by a shared image to the least name of their linked set."""
    parent: dict[str, str] = {}

    def find(g: str) -> str:
        while parent.get(g, g) != g:
            g = parent[g]
        return g

    for a, b in aliases:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    for item in items:
        item.group = find(str(item.group))


def _parent_name(root: Path, path: Path) -> str:
    same_root = path.resolve().parent == root.resolve()
    return path.name if same_root else str(path.resolve())


# --- writing ---------------------------------------------------------------------------------

def _write_version(root: Path, items: list[_Item], class_names: list[str], *, source: str,
                   parents: list[str]) -> DatasetVersion:
    """Write items as the next version via a staging directory renamed into place."""
    root.mkdir(parents=True, exist_ok=True)
    existing = [int(p.name[1:]) for p in list_versions(root)]
    final = root / f"v{max(existing, default=0) + 1:04d}"
    coco = _build_coco(items, class_names)
    try:
        with atomic_directory(final) as staging:
            _write_images(staging / "images", items)
            ann_bytes = json.dumps(coco).encode()
            write_bytes_atomic(staging / ANNOTATIONS, ann_bytes)
            manifest = _build_manifest(final.name, items, coco, class_names, source, parents)
            manifest["annotations_sha256"] = hashlib.sha256(ann_bytes).hexdigest()
            write_bytes_atomic(staging / MANIFEST, json.dumps(manifest, indent=1).encode())
    except OSError as err:  # also a concurrent writer that took the same version name
        raise DatasetError(f"cannot write dataset version {final}: {err}") from err
    return open_version(final)


def _write_images(directory: Path, items: list[_Item]) -> None:
    directory.mkdir()
    for item in items:
        with open(directory / f"{item.hash}{item.ext}", "wb") as fh:
            fh.write(item.data)
            fh.flush()
            os.fsync(fh.fileno())


def _build_coco(items: list[_Item], class_names: list[str]) -> dict[str, Any]:
    category = {n: i + 1 for i, n in enumerate(class_names)}
    coco: dict[str, Any] = {
        "info": {"description": "cv_autolabel dataset version"},
        "categories": [{"id": i + 1, "name": n, "supercategory": ""}
                       for i, n in enumerate(class_names)],
        "images": [], "annotations": []}
    for image_id, item in enumerate(items, start=1):
        coco["images"].append({"id": image_id, "file_name": f"images/{item.hash}{item.ext}",
                               "width": item.width, "height": item.height})
        for name, ann in item.annotations:
            new = copy.deepcopy(ann)
            new.update(id=len(coco["annotations"]) + 1, image_id=image_id,
                       category_id=category[name])
            coco["annotations"].append(new)
    return coco


def _build_manifest(version: str, items: list[_Item], coco: dict[str, Any],
                    class_names: list[str], source: str, parents: list[str]) -> dict[str, Any]:
    records = [{"hash": i.hash, "file": f"images/{i.hash}{i.ext}", "width": i.width,
                "height": i.height, "source": i.source, "file_name": i.file_name,
                "stamp_ns": i.stamp_ns, "group": i.group} for i in items]
    return {"format": MANIFEST_VERSION, "version": version,
            "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "parents": parents, "source": source, "class_names": class_names,
            "images": records, "counts": class_counts(coco, class_names)}


def class_counts(coco: dict[str, Any], class_names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Return ``{class: {"instances": n, "images": m}}`` of a COCO dict (1-based ids)."""
    counts = {n: {"instances": 0, "images": 0} for n in class_names}
    seen: set[tuple[int, int]] = set()
    for ann in coco["annotations"]:
        name = class_names[ann["category_id"] - 1]
        counts[name]["instances"] += 1
        if (ann["category_id"], ann["image_id"]) not in seen:
            seen.add((ann["category_id"], ann["image_id"]))
            counts[name]["images"] += 1
    return counts


# --- verifying -------------------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing: not a dataset version?") from None
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path} is unreadable: {err}") from err
    if not isinstance(doc, dict):
        raise DatasetError(f"{path} is not a JSON object")
    return doc


def _check_image(version_dir: Path, record: dict[str, Any]) -> None:
    path = version_dir / record["file"]
    if not path.is_file():
        raise DatasetError(f"{path} is listed in the manifest but missing")
    if sha256_file(path)[:_HASH_CHARS] != record["hash"]:
        raise DatasetError(f"{path} does not match its content hash: altered or corrupt")
