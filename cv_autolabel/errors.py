"""The one error hierarchy of cv_autolabel.

Every error the package raises on purpose derives from :class:`CvAutolabelError`, so a ROS
callback can catch it, log it, count it and drop the frame, and the CLI can print
``error: …`` and exit non-zero, without swallowing programming errors.
"""

from __future__ import annotations


class CvAutolabelError(Exception):
    """Base class of every error raised by cv_autolabel on purpose."""


class ConfigError(CvAutolabelError):
    """A configuration file or parameter is missing or invalid."""


class MessageError(CvAutolabelError):
    """A ROS message is malformed or cannot be converted."""


class ImageEncodingError(MessageError):
    """A ``sensor_msgs/Image`` has an unsupported encoding or inconsistent size fields."""


class CameraInfoError(MessageError):
    """A ``sensor_msgs/CameraInfo`` is missing or inconsistent."""


class BagError(CvAutolabelError):
    """A ROS 2 bag cannot be opened, read or written."""


class SimulationError(CvAutolabelError):
    """The synthetic world cannot be built or rendered with the given settings."""


class FusionError(CvAutolabelError):
    """Masks, depth and intrinsics cannot be fused into 3D objects.

    Raised when the depth image is not aligned to (sized like) the masks and the colour
    image, when it is not float metres, or when the intrinsics describe another image size.
    """


class EmbedderError(CvAutolabelError):
    """An image embedder cannot be built, converted, loaded or fed the given input."""


class VectorStoreError(CvAutolabelError):
    """A vector store cannot be opened, read or written, or holds another embedding space.

    Raised, among others, when a Milvus Lite store is already open in another process, when
    a collection was created by a different embedder or dimension, and when a Milvus call
    fails; the message names the store's URI.
    """


class ModelError(CvAutolabelError):
    """A model directory is missing, incomplete or fails its checksum manifest."""


class SegmenterError(CvAutolabelError):
    """An instance segmenter cannot be loaded or fed the given input.

    Raised, among others, when a model directory is missing, incomplete or corrupt (the message
    names the directory), and when an image is not (H, W, 3) uint8.
    """


class TeacherError(CvAutolabelError):
    """A teacher model (e.g. SAM3) cannot be created or run: missing weights, bad prompts."""


class QueueError(CvAutolabelError):
    """The annotation queue cannot be opened, read or written, or was given invalid input.

    Raised, among others, when the SQLite database is locked or corrupt (the message names
    it), when the queue is used after ``close()``, and when an entry's instances do not match
    its frame's size or its reasons are not JSON-serialisable.
    """


class CocoError(CvAutolabelError):
    """A COCO dataset cannot be built, validated, written or read.

    Raised when a built dataset fails its pycocotools round trip (a mask does not decode back
    to its source), when the target zip already exists, and when a zip lacks its annotation
    file or an image it lists.
    """


class CvatImportError(CvAutolabelError):
    """A CVAT COCO 1.0 zip cannot be imported as a whole.

    Raised when the file is not a readable zip, when a member breaks a hard limit (path
    traversal, absolute or drive-letter name, symlink, duplicate name, too many members, a
    member or the total too large, a compression ratio of a zip bomb), and when the zip has no
    usable ``annotations/instances_<subset>.json``; the message names the member and the limit.
    Problems of single images or annotations are reported, not raised.
    """


class DatasetError(CvAutolabelError):
    """A dataset version cannot be created, opened, merged or prepared for training.

    Raised when a COCO dict is malformed or lists an image whose bytes are missing, when a
    version's manifest is unreadable or an image or the annotation file no longer matches its
    recorded hash (the message names the file), and when a split or output directory is invalid.
    """


class ExportError(CvAutolabelError):
    """A model cannot be exported, verified or published.

    Raised when the weights or the data.yaml are missing, when ultralytics/NNCF fail to export
    or validate, when the output directory is not empty or the publish path is not a symlink,
    and when the INT8 model loses more mask mAP50-95 than the tolerance allows (the message
    names both mAPs and the drop; the FP32 export and the report are kept).
    """


class TrainingError(CvAutolabelError):
    """A segmentation model cannot be trained with the given data, model or settings.

    Raised when data.yaml is missing or lacks existing train/val images, when the model is
    neither a known segmentation config nor an existing local ``.pt`` (nothing is downloaded),
    when the run directory already exists, when experiment tracking cannot start, and when
    ultralytics fails during training (the message carries its error).
    """
