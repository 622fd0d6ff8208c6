"""Import a COCO 1.0 zip exported by CVAT, checking the archive and every annotation first.

Nothing is extracted to disk: members are listed with :mod:`zipfile`, their names, kinds and
sizes checked, and only then the annotation files and the images they list are read into
memory. Two kinds of problem are told apart:

* the archive itself is unsafe or unusable (path traversal, absolute or drive-letter names,
  backslashes, NUL, symlinks or other special files, duplicate names, a name that is both a
  file and a directory, encryption, too many members, a member or the total too large, a zip
  bomb's compression ratio, no ``annotations/instances_<subset>.json``, unreadable JSON or
  categories): :class:`CvatImportError` rejects the whole zip and names the member and limit;
* a single image or annotation is wrong (missing or corrupt image, size mismatch, bad
  category, bbox, polygon or RLE): it is left out and a :class:`Rejection` says why.

Layout, as CVAT writes it::

    annotations/instances_<subset>.json      (one per subset: default, train, ...; merged)
    images/<subset>/<file_name>              (or images/<file_name>)

``file_name`` may also carry the subset prefix. In the result an image is keyed by its path
relative to ``images/<subset>/``; with several subsets the key is ``<subset>/<path>`` and
image and annotation ids are renumbered from 1 so that they stay unique after the merge.
"""

from __future__ import annotations

import json
import math
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from cv_autolabel.errors import CvatImportError

_ANNOTATIONS_RE = re.compile(r"annotations/instances_([^/]+)\.json")
_DRIVE_RE = re.compile(r"[A-Za-z]:")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: JPEG start-of-frame markers (C4, C8 and CC share the range but are not frames).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: Longest compressed-RLE number, in 6-bit characters, that fits pycocotools' 64-bit long.
_RLE_MAX_CHARS = 13


@dataclass(frozen=True)
class ImportLimits:
    """Hard limits on the archive, and the tolerance on coordinates.

    Attributes:
        max_members: most entries (files and directories) in the zip.
        max_member_bytes: largest uncompressed size of one member.
        max_total_bytes: largest uncompressed size of all members together; the accepted
            images are held in memory, so this bounds the memory an import takes.
        max_ratio: highest uncompressed/compressed size ratio of a member larger than
            ``ratio_min_bytes``.
        ratio_min_bytes: members up to this size may compress better (small JSON, blank PNG).
        max_image_pixels: largest image (width x height) decoded; larger ones are rejected.
        tolerance_px: how far a bbox or polygon may overshoot the image and be clipped back;
            further out it is rejected.
    """

    max_members: int = 100_000
    max_member_bytes: int = 256 * 2**20
    max_total_bytes: int = 2 * 2**30
    max_ratio: float = 200.0
    ratio_min_bytes: int = 2**20
    max_image_pixels: int = 100_000_000
    tolerance_px: float = 1.0


@dataclass(frozen=True)
class Rejection:
    """One image or annotation left out of the import, and why.

    Attributes:
        file: the image's ``file_name`` as the JSON gives it, or the annotation JSON member
            when the annotation names no known image.
        annotation_id: the rejected annotation's id; None for a whole image (or a non-integer id).
        reason: one line.
    """

    file: str
    annotation_id: int | None
    reason: str

    def __str__(self) -> str:
        what = "image" if self.annotation_id is None else f"annotation {self.annotation_id}"
        return f"{self.file}: {what}: {self.reason}"


@dataclass
class ImportReport:
    """What an import accepted, left out and ignored.

    Attributes:
        subsets: the CVAT subsets read, in name order.
        images_accepted: images in the result.
        annotations_accepted: annotations in the result.
        rejections: images and annotations left out, each with its reason.
        unlabelled_images: accepted images (result keys) that had annotations, all rejected;
            they stay, since an unlabelled image is valid data.
        unreferenced_images: members under ``images/`` that no annotation file lists.
        ignored_members: other members, neither an annotation file nor an image.
    """

    subsets: list[str]
    images_accepted: int = 0
    annotations_accepted: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    unlabelled_images: list[str] = field(default_factory=list)
    unreferenced_images: list[str] = field(default_factory=list)
    ignored_members: list[str] = field(default_factory=list)


@dataclass
class ImportResult:
    """A cleaned CVAT import, ready for ``create_version(root, r.coco, r.images, ...)``.

    Attributes:
        coco: the COCO instances dict: only accepted images and annotations, each image's
            ``file_name`` being its key in ``images``.
        images: the encoded image files, by ``file_name``.
        report: what was accepted, rejected and ignored.
        source: the zip's file name, for the dataset version's provenance.
    """

    coco: dict[str, Any]
    images: dict[str, bytes]
    report: ImportReport
    source: str

    @property
    def class_names(self) -> list[str]:
        """Return the category names in category id order."""
        return [c["name"] for c in sorted(self.coco["categories"], key=lambda c: c["id"])]


class _Reject(Exception):
    """An image or annotation is invalid; the message is the one-line reason."""


@dataclass(frozen=True)
class _Image:
    """An accepted image: its id in the result, its key and size."""

    new_id: int
    key: str
    height: int
    width: int


def load_cvat_zip(zip_path: Path | str, *, limits: ImportLimits = ImportLimits()
                  ) -> ImportResult:
    """Read a CVAT COCO 1.0 zip, keeping only safe members and valid images and annotations.

    Args:
        zip_path: the zip CVAT exported ("Export dataset", format COCO 1.0, with images).
        limits: hard limits on the archive and the coordinate tolerance.

    Returns:
        The cleaned COCO dict, the image bytes by ``file_name`` and the report.

    Raises:
        CvatImportError: the zip is unreadable, breaks a hard limit (the message names the
            member and the limit), or has no usable annotation file.
    """
    zip_path = Path(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return _Importer(zf, limits).run(zip_path.name)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError,
            NotImplementedError) as err:
        raise CvatImportError(f"cannot read CVAT zip {zip_path}: {err}") from err


# -- the archive ---------------------------------------------------------------------------------


def unsafe_name(name: str) -> str | None:
    """Return why a member or file name is unsafe to use as a relative path, or None.

    Example:
        >>> unsafe_name("images/default/a.png"), unsafe_name("images/../../etc/passwd")
        (None, "has a '..' component")
    """
    if "\x00" in name:
        return "contains NUL"
    if "\\" in name:  # Windows extractors treat it as a separator: a\..\..\x escapes
        return "contains a backslash"
    if name.startswith("/"):
        return "is an absolute path"
    if _DRIVE_RE.match(name):
        return "has a drive letter"
    parts = name.split("/")
    if ".." in parts:
        return "has a '..' component"
    if any(part in ("", ".") for part in parts):
        return "has an empty or '.' component"
    return None


def _check_member(info: zipfile.ZipInfo, limits: ImportLimits) -> None:
    """Raise CvatImportError when one member breaks a hard limit (its header alone decides)."""
    why = _member_problem(info, limits)
    if why is not None:
        raise CvatImportError(f"unsafe zip member {info.orig_filename!r}: {why}")


def _member_problem(info: zipfile.ZipInfo, limits: ImportLimits) -> str | None:
    name = info.orig_filename  # zipfile cuts ``filename`` at a NUL; the original keeps it
    kind = stat.S_IFMT(info.external_attr >> 16)  # Unix mode; 0 from most Windows zippers
    if (why := unsafe_name(name[:-1] if info.is_dir() else name)) is not None:
        return why
    if kind == stat.S_IFLNK:
        return "is a symlink"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return f"is a special file (mode {kind:o})"
    if (kind == stat.S_IFDIR and not info.is_dir()) or (info.is_dir() and info.file_size):
        return "is a directory posing as a file"
    if info.flag_bits & 0x1:
        return "is encrypted"
    if info.file_size > limits.max_member_bytes:
        return f"is {info.file_size} bytes, over max_member_bytes={limits.max_member_bytes}"
    if _is_bomb(info, limits):
        return (f"expands {info.compress_size} to {info.file_size} bytes, a ratio over "
                f"max_ratio={limits.max_ratio} (zip bomb)")
    return None


def _is_bomb(info: zipfile.ZipInfo, limits: ImportLimits) -> bool:
    return (info.file_size > limits.ratio_min_bytes
            and info.file_size > limits.max_ratio * max(info.compress_size, 1))


def _checked_members(zf: zipfile.ZipFile, limits: ImportLimits) -> dict[str, zipfile.ZipInfo]:
    """Check every member's header and return the files by name (directories left out)."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise CvatImportError(f"zip has {len(infos)} members, over "
                              f"max_members={limits.max_members}")
    seen: set[str] = set()
    for info in infos:
        _check_member(info, limits)
        if info.filename in seen:  # extractors disagree on which copy wins
            raise CvatImportError(f"unsafe zip member {info.filename!r}: duplicate name")
        seen.add(info.filename)
    total = sum(info.file_size for info in infos)
    if total > limits.max_total_bytes:
        raise CvatImportError(f"zip expands to {total} bytes, over "
                              f"max_total_bytes={limits.max_total_bytes}")
    files = {info.filename: info for info in infos if not info.is_dir()}
    parents = {name[:i] for name in seen for i, char in enumerate(name) if char == "/"}
    if clash := sorted(parents & files.keys()):
        raise CvatImportError(f"unsafe zip member {clash[0]!r}: is both a file and a directory")
    return files


# -- the importer --------------------------------------------------------------------------------


class _Importer:
    """One import: the open zip, its checked members, and the result being built."""

    def __init__(self, zf: zipfile.ZipFile, limits: ImportLimits) -> None:
        self.zf = zf
        self.limits = limits
        self.members = _checked_members(zf, limits)
        self.used: set[str] = set()
        self.images: dict[str, bytes] = {}
        self.coco: dict[str, Any] = {}
        self.report = ImportReport(subsets=[])
        self.multi = False

    def run(self, source: str) -> ImportResult:
        """Read every subset and return the merged result."""
        subsets = self._read_subsets()
        self.multi = len(subsets) > 1
        self.report.subsets = [subset for subset, _, _ in subsets]
        first = subsets[0][2]
        self.coco = {"licenses": first.get("licenses", []), "info": first.get("info", {}),
                     "categories": _merged_categories(subsets), "images": [],
                     "annotations": []}
        for subset, member, dataset in subsets:
            self._import_subset(subset, member, dataset)
        self._report_leftovers()
        self.report.images_accepted = len(self.coco["images"])
        self.report.annotations_accepted = len(self.coco["annotations"])
        return ImportResult(self.coco, self.images, self.report, source)

    def _read(self, name: str) -> bytes:
        """Return a member's bytes, reading no more than its checked header allows."""
        info = self.members[name]
        with self.zf.open(info) as fh:
            data = fh.read(info.file_size + 1)
        if len(data) != info.file_size:  # a lying header: trust neither size
            raise CvatImportError(f"zip member {name!r} holds {len(data)}+ bytes, its header "
                                  f"says {info.file_size}")
        self.used.add(name)
        return data

    def _read_subsets(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Return (subset, member, dataset) of every annotation file, by subset name."""
        found = sorted((m.group(1), name) for name in self.members
                       if (m := _ANNOTATIONS_RE.fullmatch(name)))
        if not found:
            raise CvatImportError("zip has no annotations/instances_<subset>.json; export the "
                                  "dataset from CVAT as COCO 1.0")
        return [(subset, name, _parse_dataset(name, self._read(name)))
                for subset, name in found]

    def _import_subset(self, subset: str, member: str, dataset: dict[str, Any]) -> None:
        names = {img.get("id"): str(img.get("file_name")) for img in dataset["images"]
                 if isinstance(img, dict) and _is_int(img.get("id"))}
        accepted = self._import_images(subset, dataset["images"])
        labelled = self._import_annotations(member, dataset["annotations"], accepted, names)
        annotated = {ann.get("image_id") for ann in dataset["annotations"]
                     if isinstance(ann, dict)}
        self.report.unlabelled_images += [image.key for old_id, image in accepted.items()
                                          if old_id in annotated and old_id not in labelled]

    def _import_images(self, subset: str, records: list[Any]) -> dict[int, _Image]:
        """Add the valid images of one subset; return them by their id in the JSON."""
        accepted: dict[int, _Image] = {}
        for record in records:
            file_name = record.get("file_name") if isinstance(record, dict) else None
            try:
                old_id, image = self._image(subset, record, accepted)
            except _Reject as err:
                self._reject(str(file_name), None, str(err))
                continue
            accepted[old_id] = image
        return accepted

    def _image(self, subset: str, record: Any, accepted: dict[int, _Image]
               ) -> tuple[int, _Image]:
        """Check one image record and its file; add it to the result and return it."""
        image_id, file_name, height, width = _image_fields(record)
        if image_id in accepted:
            raise _Reject(f"duplicate image id {image_id}")
        member, key = self._locate(subset, file_name)
        if key in self.images:
            raise _Reject(f"duplicate file_name {key!r}")
        data = self._read(member)
        actual = _decoded_size(data, self.limits.max_image_pixels)
        if actual != (height, width):
            raise _Reject(f"image file is {actual[1]}x{actual[0]} but the JSON says "
                          f"{width}x{height}")
        new_id = len(self.coco["images"]) + 1 if self.multi else image_id
        self.coco["images"].append({**record, "id": new_id, "file_name": key})
        self.images[key] = data
        return image_id, _Image(new_id, key, height, width)

    def _locate(self, subset: str, file_name: str) -> tuple[str, str]:
        """Return the member holding ``file_name`` and its key in the result."""
        for member in (f"images/{subset}/{file_name}", f"images/{file_name}"):
            if member in self.members:
                relative = member.removeprefix("images/").removeprefix(f"{subset}/")
                return member, f"{subset}/{relative}" if self.multi else relative
        raise _Reject(f"image file missing in the zip (looked in images/{subset}/ and images/)")

    def _import_annotations(self, member: str, records: list[Any],
                            accepted: dict[int, _Image], names: dict[Any, str]) -> set[int]:
        """Add the valid annotations of one subset; return the JSON ids of images labelled."""
        categories = {c["id"] for c in self.coco["categories"]}
        seen: set[int] = set()
        labelled: set[int] = set()
        for record in records:
            fields = record if isinstance(record, dict) else {}
            ann_id = fields.get("id") if _is_int(fields.get("id")) else None
            image_id = fields.get("image_id")
            try:
                clean = _annotation(record, accepted, names, categories, seen,
                                    self.limits.tolerance_px)
            except _Reject as err:
                self._reject(names.get(image_id, member), ann_id, str(err))
                continue
            if self.multi:
                clean["id"] = len(self.coco["annotations"]) + 1
            self.coco["annotations"].append(clean)
            labelled.add(image_id)
        return labelled

    def _reject(self, file: str, annotation_id: int | None, reason: str) -> None:
        self.report.rejections.append(Rejection(file, annotation_id, reason))

    def _report_leftovers(self) -> None:
        for name in sorted(self.members.keys() - self.used):
            if name.startswith("images/"):
                self.report.unreferenced_images.append(name)
            else:
                self.report.ignored_members.append(name)


# -- annotation files ----------------------------------------------------------------------------


def _parse_dataset(member: str, data: bytes) -> dict[str, Any]:
    """Return the parsed instances JSON, checked to have the three COCO lists."""
    try:
        dataset = json.loads(data)
    except (ValueError, RecursionError) as err:  # RecursionError: absurdly nested JSON
        raise CvatImportError(f"annotation file {member!r} is not valid JSON: {err}") from err
    if not isinstance(dataset, dict) or not all(
            isinstance(dataset.get(k), list) for k in ("images", "annotations", "categories")):
        raise CvatImportError(f"annotation file {member!r} lacks the lists images, "
                              "annotations and categories")
    return dataset


def _merged_categories(subsets: list[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Return the categories all subsets share; anything else makes every label ambiguous."""
    merged: list[dict[str, Any]] | None = None
    for _, member, dataset in subsets:
        categories = _categories(member, dataset["categories"])
        if merged is not None and categories != merged:
            raise CvatImportError(f"categories of {member!r} differ from those of "
                                  f"{subsets[0][1]!r}")
        merged = categories
    assert merged is not None  # subsets is never empty
    return merged


def _categories(member: str, records: list[Any]) -> list[dict[str, Any]]:
    """Return one file's categories by id, each with an integer id and a name, or raise."""
    categories = [{"id": c["id"], "name": c["name"],
                   "supercategory": str(c.get("supercategory", ""))}
                  for c in records if _is_category(c)]
    ids = [c["id"] for c in categories]
    if len(categories) != len(records) or len(set(ids)) != len(ids):
        raise CvatImportError(f"annotation file {member!r} has categories without an integer "
                              "id and a name, or with duplicate ids")
    return sorted(categories, key=lambda c: c["id"])


def _is_category(record: Any) -> bool:
    return (isinstance(record, dict) and _is_int(record.get("id"))
            and isinstance(record.get("name"), str))


# -- images --------------------------------------------------------------------------------------


def _image_fields(record: Any) -> tuple[int, str, int, int]:
    """Return (id, file_name, height, width) of an image record, checked."""
    if not isinstance(record, dict):
        raise _Reject("image record is not an object")
    image_id, file_name = record.get("id"), record.get("file_name")
    height, width = record.get("height"), record.get("width")
    if not _is_int(image_id):
        raise _Reject(f"image id {image_id!r} is not an integer")
    if not isinstance(file_name, str) or unsafe_name(file_name) is not None:
        raise _Reject(f"file_name {file_name!r} is not a safe relative path")
    if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
        raise _Reject(f"width {width!r} and height {height!r} are not positive integers")
    return image_id, file_name, height, width


def _decoded_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """Return (height, width) of an encoded image, decoding it fully to catch corruption."""
    header = _header_size(data)
    if header is not None and header[0] * header[1] > max_pixels:
        raise _Reject(f"image is {header[1]}x{header[0]}, over max_image_pixels={max_pixels}")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise _Reject(f"image file cannot be decoded: {err}") from err
    if image is None:
        raise _Reject("image file is corrupt or not an image")
    return int(image.shape[0]), int(image.shape[1])


def _header_size(data: bytes) -> tuple[int, int] | None:
    """Return (height, width) from a PNG or JPEG header, before decoding allocates it."""
    if data[:8] == _PNG_MAGIC and data[12:16] == b"IHDR":
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
    pos = 2 if data[:2] == b"\xff\xd8" else len(data)
    while pos + 9 <= len(data) and data[pos] == 0xFF:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _JPEG_SOF:
            return (int.from_bytes(data[pos + 5:pos + 7], "big"),
                    int.from_bytes(data[pos + 7:pos + 9], "big"))
        pos += 2 + length
    return None


# -- annotations ---------------------------------------------------------------------------------


def _annotation(record: Any, images: dict[int, _Image], names: dict[Any, str],
                categories: set[int], seen: set[int], tolerance: float) -> dict[str, Any]:
    """Return the cleaned copy of one annotation, or raise _Reject saying what is wrong."""
    if not isinstance(record, dict):
        raise _Reject("annotation is not an object")
    ann_id, image_id = record.get("id"), record.get("image_id")
    if not _is_int(ann_id) or ann_id in seen:
        raise _Reject(f"annotation id {ann_id!r} is not a unique integer")
    seen.add(ann_id)
    if image_id not in images:
        raise _Reject(f"its image {image_id!r} was rejected" if image_id in names
                      else f"unknown image_id {image_id!r}")
    if not _is_int(record.get("category_id")) or record["category_id"] not in categories:
        raise _Reject(f"unknown category_id {record.get('category_id')!r}")
    image = images[image_id]
    segmentation, area = _segmentation(record.get("segmentation"), record.get("iscrowd"),
                                       image, tolerance)
    clean = {"id": ann_id, "image_id": image.new_id, "category_id": record["category_id"],
             "segmentation": segmentation, "area": _area(record.get("area"), area),
             "bbox": _bbox(record.get("bbox"), image, tolerance),
             "iscrowd": record["iscrowd"]}
    if isinstance(record.get("attributes"), dict):
        clean["attributes"] = record["attributes"]
    return clean


def _area(given: Any, computed: int) -> float:
    """Return the annotation's own area when it is a sane number, else the rasterised one."""
    if _is_number(given) and math.isfinite(given) and given >= 0:
        return given
    return computed


def _segmentation(segmentation: Any, iscrowd: Any, image: _Image, tolerance: float
                  ) -> tuple[Any, int]:
    """Return the cleaned segmentation and its pixel area; polygons for 0, RLE for 1."""
    if iscrowd not in (0, 1) or not _is_int(iscrowd):
        raise _Reject(f"iscrowd {iscrowd!r} is neither 0 nor 1")
    if iscrowd == 0 and not isinstance(segmentation, list):
        raise _Reject("iscrowd is 0 but the segmentation is not a list of polygons")
    if iscrowd == 1 and not isinstance(segmentation, dict):
        raise _Reject("iscrowd is 1 but the segmentation is not an RLE object")
    if iscrowd == 0:
        segmentation = _polygons(segmentation, image, tolerance)
        encoded = mask_utils.merge(mask_utils.frPyObjects(segmentation, image.height,
                                                          image.width))
    else:
        encoded = _rle(segmentation, image)
        segmentation = {"counts": segmentation["counts"], "size": segmentation["size"]}
    area = int(mask_utils.area(encoded))
    if area == 0:
        raise _Reject("segmentation covers no pixel")
    return segmentation, area


def _polygons(polygons: list[Any], image: _Image, tolerance: float) -> list[list[float]]:
    """Return the polygons clipped to the image; each needs >= 3 finite points and an area."""
    if not polygons:
        raise _Reject("segmentation has no polygon")
    clean = []
    for polygon in polygons:
        if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
            size = len(polygon) if isinstance(polygon, list) else type(polygon).__name__
            raise _Reject(f"polygon has {size} coordinates; it needs an even number >= 6")
        xy = _finite(polygon, "polygon").reshape(-1, 2)
        bounds = np.array([image.width, image.height], float)
        if (xy < -tolerance).any() or (xy > bounds + tolerance).any():
            raise _Reject(f"polygon leaves the {image.width}x{image.height} image by more "
                          f"than {tolerance} px")
        xy = np.clip(xy, 0.0, bounds)
        if _shoelace(xy) <= 1e-9:
            raise _Reject("polygon has zero area")
        clean.append(xy.ravel().tolist())
    return clean


def _shoelace(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _rle(rle: dict[str, Any], image: _Image) -> dict[str, Any]:
    """Return the compressed form of a checked RLE (uncompressed list or compressed string)."""
    size, counts = rle.get("size"), rle.get("counts")
    expected = [image.height, image.width]
    if not (isinstance(size, list) and all(_is_int(v) for v in size) and size == expected):
        raise _Reject(f"RLE size {size!r} is not the image's {expected}")
    if isinstance(counts, str):
        runs = _compressed_runs(counts)
    elif isinstance(counts, list) and all(_is_int(c) for c in counts):
        runs = counts
    else:
        raise _Reject("RLE counts are neither a string nor a list of integers")
    # checked before pycocotools sees them: its decoder writes runs without a bounds check
    if any(run < 0 for run in runs) or sum(runs) != image.height * image.width:
        raise _Reject(f"RLE runs sum to {sum(runs)}, not {image.height}*{image.width}, or "
                      "one is negative")
    try:
        if isinstance(counts, str):
            return {"size": size, "counts": counts.encode("ascii")}
        return mask_utils.frPyObjects(rle, image.height, image.width)
    except (TypeError, ValueError, OverflowError) as err:
        raise _Reject(f"pycocotools cannot read the RLE: {err}") from err


def _compressed_runs(counts: str) -> list[int]:
    """Return the runs of a compressed COCO RLE string, as pycocotools' rleFrString reads it.

    Example:
        >>> _compressed_runs("222")
        [2, 2, 2]
    """
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            char = ord(counts[pos]) - 48 if pos < len(counts) else -1
            if not 0 <= char < 64 or shift >= 5 * _RLE_MAX_CHARS:
                raise _Reject("compressed RLE counts are malformed")
            value |= (char & 0x1F) << shift
            more, pos, shift = bool(char & 0x20), pos + 1, shift + 5
            if not more and char & 0x10:
                value |= -1 << shift  # sign-extend
        runs.append(value + (runs[-2] if len(runs) > 2 else 0))
    return runs


def _bbox(bbox: Any, image: _Image, tolerance: float) -> list[float]:
    """Return ``[x, y, w, h]`` clipped to the image, rejecting more than ``tolerance`` px out."""
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise _Reject(f"bbox {bbox!r} is not 4 numbers")
    x, y, w, h = _finite(bbox, "bbox").tolist()
    if w < 0 or h < 0:
        raise _Reject(f"bbox {bbox} has a negative size")
    if (x < -tolerance or y < -tolerance or x + w > image.width + tolerance
            or y + h > image.height + tolerance):
        raise _Reject(f"bbox {bbox} leaves the {image.width}x{image.height} image by more "
                      f"than {tolerance} px")
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w, float(image.width)), min(y + h, float(image.height))
    return [x1, y1, max(x2 - x1, 0.0), max(y2 - y1, 0.0)]


def _finite(values: list[Any], what: str) -> np.ndarray:
    """Return ``values`` as float64, rejecting non-numbers, NaN and infinities."""
    if not all(_is_number(v) for v in values):
        raise _Reject(f"{what} holds a value that is not a number")
    try:
        array = np.asarray(values, np.float64)
    except OverflowError as err:
        raise _Reject(f"{what} holds a number too large") from err
    if not np.isfinite(array).all():
        raise _Reject(f"{what} holds NaN or infinity")
    return array


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
