"""Convert ``sensor_msgs/Image`` messages to numpy arrays and back, without cv_bridge.

Messages are duck-typed: anything with ``height width encoding is_bigendian step data`` works.
rclpy keeps ``data`` as ``array.array('B')``, rosbags as a numpy uint8 array; bytes and lists of
ints are accepted too. The size fields are checked against each other and against the buffer
before any pixel is touched, so a corrupt message raises :class:`ImageEncodingError` instead of
allocating gigabytes.

Channel conventions follow cv_bridge: ``8UC3`` is BGR, ``8UC4`` is BGRA, ``yuv422`` is packed
UYVY and ``yuv422_yuy2`` (alias ``yuyv``) is packed YUYV.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from cv_autolabel.errors import ImageEncodingError

from cv_autolabel.ros.factory import as_sequence_field

if TYPE_CHECKING:
    from cv_autolabel.ros.factory import MessageFactory

#: Largest pixel buffer (``height * step`` bytes) accepted; larger claims are corrupt messages.
MAX_IMAGE_BYTES = 2**31


@dataclass(frozen=True)
class EncodingInfo:
    """Memory layout of one ``sensor_msgs/Image`` encoding.

    Attributes:
        channels: values per pixel; 2 for packed YUV 4:2:2 (luma plus one chroma byte).
        dtype: numpy dtype of one value, native byte order.
        colour: how :func:`image_to_rgb` reads the channels: ``"rgb"``, ``"bgr"``, ``"rgba"``,
            ``"bgra"``, ``"gray"``, ``"uyvy"`` or ``"yuy2"``; None for non-colour data
            (depth, disparity, raw measurements).
    """

    channels: int
    dtype: np.dtype
    colour: str | None = None

    @property
    def bytes_per_pixel(self) -> int:
        """Return the size of one pixel in bytes."""
        return self.channels * self.dtype.itemsize


def _info(channels: int, dtype: type, colour: str | None = None) -> EncodingInfo:
    return EncodingInfo(channels, np.dtype(dtype), colour)


#: Every encoding this module reads and writes, by ``sensor_msgs/Image.encoding`` string.
ENCODINGS: Mapping[str, EncodingInfo] = MappingProxyType({
    "rgb8": _info(3, np.uint8, "rgb"),
    "bgr8": _info(3, np.uint8, "bgr"),
    "rgba8": _info(4, np.uint8, "rgba"),
    "bgra8": _info(4, np.uint8, "bgra"),
    "mono8": _info(1, np.uint8, "gray"),
    "mono16": _info(1, np.uint16, "gray"),
    "8UC1": _info(1, np.uint8, "gray"),
    "8UC3": _info(3, np.uint8, "bgr"),
    "8UC4": _info(4, np.uint8, "bgra"),
    "16UC1": _info(1, np.uint16),
    "16SC1": _info(1, np.int16),
    "32FC1": _info(1, np.float32),
    "64FC1": _info(1, np.float64),
    "yuv422": _info(2, np.uint8, "uyvy"),
    "yuv422_yuy2": _info(2, np.uint8, "yuy2"),
    "yuyv": _info(2, np.uint8, "yuy2"),
})

_DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")


def _lookup(encoding: Any) -> EncodingInfo:
    info = ENCODINGS.get(encoding) if isinstance(encoding, str) else None
    if info is None:
        text = (f"unsupported image encoding {encoding!r}; supported encodings: "
                f"{', '.join(ENCODINGS)}")
        raise ImageEncodingError(text)
    return info


def _byte_length(data: Any) -> int:
    # memoryview counts the bytes of any buffer (array.array of any typecode, numpy, bytes)
    # without copying it; only a plain list of ints has no buffer
    try:
        return memoryview(data).nbytes
    except TypeError:
        pass
    try:
        return len(data)
    except TypeError as err:
        text = f"image data of type {type(data).__name__} is not a byte sequence"
        raise ImageEncodingError(text) from err


def _as_uint8(data: Any) -> np.ndarray:
    """Return the message buffer as a flat uint8 array, a view wherever the buffer allows."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        pass
    try:
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (OverflowError, TypeError, ValueError) as err:
        text = "image data is not a sequence of bytes (ints in [0, 255])"
        raise ImageEncodingError(text) from err


def _checked_size(msg: Any, info: EncodingInfo) -> tuple[int, int, int]:
    """Return ``(height, width, step)`` once they agree with each other and with the buffer."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * info.bytes_per_pixel
    if height <= 0 or width <= 0:
        problem = f"has no pixels ({width}x{height})"
    elif step < row_bytes:
        problem = (f"has step {step} < width {width} x {info.bytes_per_pixel} bytes per pixel "
                   f"= {row_bytes}")
    elif height * step > MAX_IMAGE_BYTES:
        problem = (f"claims height {height} x step {step} bytes, over the "
                   f"{MAX_IMAGE_BYTES}-byte limit (corrupt header?)")
    elif (size := _byte_length(msg.data)) < height * step:
        problem = f"has {size} data bytes, fewer than height {height} x step {step}"
    else:
        return height, width, step
    text = f"{msg.encoding} image {problem}"
    raise ImageEncodingError(text)


def _pixels(msg: Any, info: EncodingInfo, *, copy: bool) -> np.ndarray:
    """Return the pixels in native byte order; without ``copy``, a view where possible."""
    height, width, step = _checked_size(msg, info)
    rows = _as_uint8(msg.data)[: height * step].reshape(height, step)
    # Slicing drops the row padding; a view with a wider dtype needs only the last axis
    # contiguous, so padded rows cost no copy here
    wire = info.dtype.newbyteorder(">" if msg.is_bigendian else "<")
    values = rows[:, : width * info.bytes_per_pixel].view(wire)
    # astype swaps bytes when the wire order is not this machine's, and copies when asked
    values = values.astype(info.dtype, copy=copy)
    shape = (height, width) if info.channels == 1 else (height, width, info.channels)
    return values.reshape(shape)


def image_to_numpy(msg: Any) -> np.ndarray:
    """Return the raw pixels of a ``sensor_msgs/Image`` as a new array.

    The result is a copy, C-contiguous and writable, so it stays valid after the middleware
    reuses the message buffer. Row padding (``step`` beyond the pixel bytes) is cut and
    big-endian data is byte-swapped to native order.

    Args:
        msg: a ``sensor_msgs/Image`` of any binding (see the module docstring).

    Returns:
        (H, W) for one-channel encodings, (H, W, C) otherwise, dtype as in :data:`ENCODINGS`;
        packed YUV 4:2:2 comes back raw as (H, W, 2) uint8.

    Raises:
        ImageEncodingError: unsupported encoding, or size fields inconsistent with the data.

    Example:
        >>> from types import SimpleNamespace
        >>> msg = SimpleNamespace(height=1, width=2, encoding="16UC1", is_bigendian=1,
        ...                       step=4, data=bytes([0x01, 0x00, 0x00, 0x02]))
        >>> image_to_numpy(msg).tolist()
        [[256, 2]]
    """
    return _pixels(msg, _lookup(msg.encoding), copy=True)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    if gray.dtype == np.uint16:
        # Keep the top byte: 16-bit cameras use the full range, and a shift cannot overflow
        gray = (gray >> 8).astype(np.uint8)
    return np.repeat(gray[..., np.newaxis], 3, axis=2)


def _yuv_to_rgb(code: int) -> Callable[[np.ndarray], np.ndarray]:
    def convert(packed: np.ndarray) -> np.ndarray:
        if packed.shape[1] % 2:
            # Two pixels share one chroma pair, so an odd width cannot be packed 4:2:2
            text = f"YUV 4:2:2 images need an even width, got {packed.shape[1]}"
            raise ImageEncodingError(text)
        return cv2.cvtColor(np.ascontiguousarray(packed), code)

    return convert


# Each converter returns a new array, never a view of the message buffer
_TO_RGB: Mapping[str, Callable[[np.ndarray], np.ndarray]] = MappingProxyType({
    "rgb": lambda pixels: pixels.copy(),
    "bgr": lambda pixels: pixels[..., ::-1].copy(),
    "rgba": lambda pixels: pixels[..., :3].copy(),
    "bgra": lambda pixels: pixels[..., 2::-1].copy(),
    "gray": _gray_to_rgb,
    "uyvy": _yuv_to_rgb(cv2.COLOR_YUV2RGB_UYVY),
    "yuy2": _yuv_to_rgb(cv2.COLOR_YUV2RGB_YUY2),
})


def image_to_rgb(msg: Any) -> np.ndarray:
    """Return a colour ``sensor_msgs/Image`` as a new (H, W, 3) uint8 RGB array.

    BGR orders are swapped, alpha is dropped, grey is replicated (``mono16`` keeps its top
    byte), ``8UC3``/``8UC4`` are read as BGR/BGRA like OpenCV and cv_bridge do, and packed
    YUV 4:2:2 is converted with OpenCV (BT.601).

    Raises:
        ImageEncodingError: a non-colour encoding (depth, float, signed) or a malformed image.

    Example:
        >>> from types import SimpleNamespace
        >>> msg = SimpleNamespace(height=1, width=2, encoding="bgr8", is_bigendian=0,
        ...                       step=6, data=bytes([0, 0, 255, 255, 0, 0]))
        >>> image_to_rgb(msg).tolist()
        [[[255, 0, 0], [0, 0, 255]]]
    """
    info = _lookup(msg.encoding)
    if info.colour is None:
        accepted = ", ".join(name for name, known in ENCODINGS.items() if known.colour)
        text = f"cannot read a {msg.encoding} image as RGB; accepted encodings: {accepted}"
        raise ImageEncodingError(text)
    return _TO_RGB[info.colour](_pixels(msg, info, copy=False))


def depth_to_metres(msg: Any) -> np.ndarray:
    """Return a depth ``sensor_msgs/Image`` as new (H, W) float32 metres, NaN where invalid.

    Follows REP 118: ``16UC1`` (and ``mono16``) hold millimetres with 0 meaning no
    measurement; ``32FC1`` holds metres, where non-finite or non-positive values mean none.

    Raises:
        ImageEncodingError: another encoding, or a malformed image.

    Example:
        >>> from types import SimpleNamespace
        >>> msg = SimpleNamespace(height=1, width=2, encoding="16UC1", is_bigendian=0,
        ...                       step=4, data=np.array([1500, 0], "<u2").view(np.uint8))
        >>> depth_to_metres(msg).tolist()
        [[1.5, nan]]
    """
    info = _lookup(msg.encoding)
    if msg.encoding not in _DEPTH_ENCODINGS:
        text = (f"cannot read a {msg.encoding} image as depth; accepted encodings: "
                f"{', '.join(_DEPTH_ENCODINGS)}")
        raise ImageEncodingError(text)
    raw = _pixels(msg, info, copy=False)
    metres = raw.astype(np.float32, copy=True)
    if raw.dtype == np.uint16:
        metres /= 1000
        metres[raw == 0] = np.nan
    else:
        metres[~(np.isfinite(metres) & (metres > 0))] = np.nan
    return metres


def _checked_array(pixels: np.ndarray, encoding: str, info: EncodingInfo) -> np.ndarray:
    """Return ``pixels`` as (H, W) or (H, W, C) once they fit ``encoding``."""
    if info.channels == 1 and pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    expected = "(H, W)" if info.channels == 1 else f"(H, W, {info.channels})"
    shape_ok = pixels.ndim == 2 if info.channels == 1 else (
        pixels.ndim == 3 and pixels.shape[2] == info.channels)
    # Compare kind and size, not dtype, so a big-endian array of the right type is accepted
    dtype_ok = (pixels.dtype.kind, pixels.dtype.itemsize) == (info.dtype.kind,
                                                               info.dtype.itemsize)
    if not (shape_ok and dtype_ok):
        text = (f"{encoding} needs a {expected} {info.dtype} array, got shape "
                f"{pixels.shape} dtype {pixels.dtype}")
        raise ImageEncodingError(text)
    if pixels.shape[0] == 0 or pixels.shape[1] == 0 or pixels.nbytes > MAX_IMAGE_BYTES:
        text = f"{encoding} image of shape {pixels.shape} is empty or over {MAX_IMAGE_BYTES} bytes"
        raise ImageEncodingError(text)
    return pixels


def numpy_to_image(
    array: np.ndarray,
    encoding: str,
    *,
    factory: MessageFactory,
    stamp_ns: int = 0,
    frame_id: str = "",
) -> Any:
    """Build a ``sensor_msgs/msg/Image`` holding a copy of ``array``.

    The message is little-endian (``is_bigendian=0``) with unpadded rows
    (``step = width * bytes_per_pixel``); ``data`` is a uint8 numpy array on rosbags and an
    ``array.array('B')`` on rclpy, whichever the factory's binding uses.

    Args:
        array: (H, W) or (H, W, 1) for one-channel encodings, (H, W, C) otherwise, with the
            dtype of :data:`ENCODINGS` (either byte order).
        encoding: a key of :data:`ENCODINGS`.
        factory: builds the messages (rosbags or rclpy).
        stamp_ns: header stamp, integer nanoseconds.
        frame_id: header frame.

    Raises:
        ImageEncodingError: unknown encoding, or an array whose shape or dtype does not fit it.

    Example:
        >>> from cv_autolabel.ros.factory import RosbagsMessageFactory
        >>> msg = numpy_to_image(np.zeros((2, 3), np.uint16), "16UC1",
        ...                      factory=RosbagsMessageFactory())
        >>> msg.height, msg.width, msg.step, len(msg.data)
        (2, 3, 6, 12)
    """
    info = _lookup(encoding)
    pixels = _checked_array(np.asarray(array), encoding, info)
    # A fresh little-endian copy: the message must not alias the caller's array
    wire = np.array(pixels, dtype=info.dtype.newbyteorder("<"), order="C", copy=True)
    header = factory.make("std_msgs/msg/Header", stamp=factory.stamp(stamp_ns),
                          frame_id=frame_id)
    msg = factory.make("sensor_msgs/msg/Image", header=header, height=pixels.shape[0],
                       width=pixels.shape[1], encoding=encoding, is_bigendian=0,
                       step=pixels.shape[1] * info.bytes_per_pixel)
    msg.data = as_sequence_field(msg.data, wire.reshape(-1).view(np.uint8))
    return msg
