"""sensor_msgs/Image <-> numpy: exact pixels, padding, byte order, depth units, bad input."""

from __future__ import annotations

import array
import struct
import time
import tracemalloc
from collections.abc import Sequence
from contextlib import nullcontext as does_not_raise
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

from cv_autolabel.errors import ImageEncodingError
from cv_autolabel.ros.factory import RosbagsMessageFactory, split_nanoseconds
from cv_autolabel.ros.image import (
    ENCODINGS,
    depth_to_metres,
    image_to_numpy,
    image_to_rgb,
    numpy_to_image,
)
from cv_autolabel.ros.typestore import typestore

FACTORY = RosbagsMessageFactory()
GARBAGE = 0xAB


class RclpyLikeImage:
    """Stand-in for an rclpy ``sensor_msgs/msg/Image``: ``data`` is an ``array.array('B')``.

    Its ``data`` setter behaves like rclpy's generated one: an ``array.array('B')`` is kept,
    a sequence of ints is converted, anything else (a numpy array) fails an assertion.
    """

    def __init__(self, **fields: Any) -> None:
        self.header = None
        self.height = self.width = self.step = self.is_bigendian = 0
        self.encoding = ""
        self._data = array.array("B")
        for name, value in fields.items():
            setattr(self, name, value)

    @property
    def data(self) -> array.array:
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        if isinstance(value, array.array):
            assert value.typecode == "B"
            self._data = value
            return
        assert isinstance(value, Sequence), "rclpy rejects non-sequences such as numpy arrays"
        self._data = array.array("B", value)


class RclpyLikeFactory:
    """Builds :class:`RclpyLikeImage` and plain namespaces for headers and stamps."""

    def make(self, typename: str, **fields: Any) -> Any:
        if typename == "sensor_msgs/msg/Image":
            return RclpyLikeImage(**fields)
        return SimpleNamespace(**fields)

    def stamp(self, nanoseconds: int) -> Any:
        sec, nanosec = split_nanoseconds(nanoseconds)
        return SimpleNamespace(sec=sec, nanosec=nanosec)


def random_pixels(encoding: str, height: int = 5, width: int = 8, seed: int = 0) -> np.ndarray:
    """Return random pixels covering the full value range of ``encoding``."""
    info = ENCODINGS[encoding]
    shape = (height, width) if info.channels == 1 else (height, width, info.channels)
    rng = np.random.default_rng(seed)
    if info.dtype.kind == "f":
        return (rng.standard_normal(shape) * 1000).astype(info.dtype)
    limits = np.iinfo(info.dtype)
    return rng.integers(limits.min, limits.max, shape, dtype=info.dtype, endpoint=True)


def raw_message(
    pixels: np.ndarray, encoding: str, *, pad: int = 0, big_endian: bool = False,
    factory: Any = FACTORY,
) -> Any:
    """Return an Image message built by hand: rows padded with garbage, chosen byte order."""
    info = ENCODINGS[encoding]
    height, width = pixels.shape[:2]
    order = ">" if big_endian else "<"
    wire = np.ascontiguousarray(pixels, dtype=info.dtype.newbyteorder(order))
    rows = wire.reshape(height, -1).view(np.uint8)
    data = np.hstack([rows, np.full((height, pad), GARBAGE, np.uint8)]).reshape(-1)
    if isinstance(factory, RclpyLikeFactory):
        data = array.array("B", data.tobytes())
    return factory.make("sensor_msgs/msg/Image", height=height, width=width, encoding=encoding,
                        is_bigendian=int(big_endian), step=rows.shape[1] + pad, data=data)


def bytes_message(encoding: str, data: Any, *, width: int, height: int = 1,
                  step: int | None = None, big_endian: bool = False) -> SimpleNamespace:
    """Return a duck-typed Image around hand-written bytes."""
    step = len(data) // height if step is None else step
    return SimpleNamespace(height=height, width=width, encoding=encoding,
                           is_bigendian=int(big_endian), step=step, data=data)


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_round_trip_is_pixel_exact(encoding: str) -> None:
    pixels = random_pixels(encoding)
    msg = numpy_to_image(pixels, encoding, factory=FACTORY)

    info = ENCODINGS[encoding]
    assert (msg.height, msg.width, msg.encoding) == (5, 8, encoding)
    assert msg.is_bigendian == 0
    assert msg.step == 8 * info.bytes_per_pixel
    assert msg.data.dtype == np.uint8
    assert len(msg.data) == msg.height * msg.step
    back = image_to_numpy(msg)
    assert back.dtype == info.dtype
    np.testing.assert_array_equal(back, pixels)


@pytest.mark.parametrize("encoding", ["rgb8", "16UC1", "32FC1", "yuv422"])
def test_round_trip_survives_cdr_serialisation(encoding: str) -> None:
    store = typestore()
    pixels = random_pixels(encoding, seed=1)
    msg = numpy_to_image(pixels, encoding, factory=FACTORY, stamp_ns=5, frame_id="cam")

    raw = store.serialize_cdr(msg, "sensor_msgs/msg/Image")
    decoded = store.deserialize_cdr(raw, "sensor_msgs/msg/Image")

    np.testing.assert_array_equal(image_to_numpy(decoded), pixels)


def test_header_carries_stamp_and_frame_id() -> None:
    msg = numpy_to_image(random_pixels("mono8"), "mono8", factory=FACTORY,
                         stamp_ns=1_700_000_000_123_456_789, frame_id="camera_color_optical")

    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_700_000_000, 123_456_789)
    assert msg.header.frame_id == "camera_color_optical"


def test_message_does_not_alias_the_source_array() -> None:
    pixels = random_pixels("rgb8")
    msg = numpy_to_image(pixels, "rgb8", factory=FACTORY)

    expected = pixels.copy()
    pixels[:] = 0

    np.testing.assert_array_equal(image_to_numpy(msg), expected)


def test_big_endian_source_array_is_written_little_endian() -> None:
    pixels = np.array([[1, 0x1234]], dtype=">u2")

    msg = numpy_to_image(pixels, "16UC1", factory=FACTORY)

    assert msg.is_bigendian == 0
    assert bytes(msg.data) == b"\x01\x00\x34\x12"
    assert image_to_numpy(msg).tolist() == [[1, 0x1234]]


def test_single_channel_array_may_carry_a_trailing_axis() -> None:
    pixels = random_pixels("mono8")

    msg = numpy_to_image(pixels[..., np.newaxis], "mono8", factory=FACTORY)

    np.testing.assert_array_equal(image_to_numpy(msg), pixels)


# --- padding, copies, byte order -------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "pad", "big_endian"),
    [
        ("rgb8", 3, False),
        ("mono8", 5, False),
        ("bgra8", 4, False),
        ("yuv422", 2, False),
        ("16UC1", 1, False),  # odd padding: every row after the first is misaligned
        ("16UC1", 2, True),
        ("mono16", 3, True),
        ("16SC1", 2, True),
        ("32FC1", 4, False),
        ("32FC1", 3, True),
        ("64FC1", 8, True),
    ],
)
def test_padded_rows_are_cut_and_byte_order_honoured(encoding: str, pad: int,
                                                     big_endian: bool) -> None:
    pixels = random_pixels(encoding, seed=2)
    msg = raw_message(pixels, encoding, pad=pad, big_endian=big_endian)

    out = image_to_numpy(msg)

    np.testing.assert_array_equal(out, pixels)
    assert out.dtype.isnative
    assert out.flags.c_contiguous
    assert out.flags.writeable


def test_result_outlives_the_message_buffer() -> None:
    pixels = random_pixels("rgb8")
    buffer = bytearray(pixels.tobytes())
    msg = bytes_message("rgb8", buffer, width=8, height=5)

    out = image_to_numpy(msg)
    rgb = image_to_rgb(msg)
    buffer[:] = bytes(len(buffer))

    np.testing.assert_array_equal(out, pixels)
    np.testing.assert_array_equal(rgb, pixels)


@pytest.mark.parametrize(
    ("encoding", "data", "big_endian", "expected"),
    [
        ("16UC1", b"\x12\x34\x00\x01", True, [0x1234, 0x0001]),
        ("16UC1", b"\x12\x34\x00\x01", False, [0x3412, 0x0100]),
        ("mono16", b"\xff\x00\x00\xff", True, [0xFF00, 0x00FF]),
        ("16SC1", b"\xff\xfe\x00\x02", True, [-2, 2]),
        ("32FC1", struct.pack(">2f", 1.5, -0.25), True, [1.5, -0.25]),
        ("32FC1", struct.pack("<2f", 1.5, -0.25), False, [1.5, -0.25]),
        ("64FC1", struct.pack(">2d", 1e-300, 7.0), True, [1e-300, 7.0]),
    ],
)
def test_hand_written_bytes_decode_in_the_declared_byte_order(
    encoding: str, data: bytes, big_endian: bool, expected: list[float],
) -> None:
    msg = bytes_message(encoding, data, width=2, big_endian=big_endian)

    assert image_to_numpy(msg).tolist() == [expected]


# --- duck typing: rclpy-like messages --------------------------------------------------------


def test_reads_rclpy_like_message_with_array_data() -> None:
    pixels = random_pixels("bgr8", seed=3)
    msg = raw_message(pixels, "bgr8", pad=2, factory=RclpyLikeFactory())
    assert isinstance(msg.data, array.array)

    np.testing.assert_array_equal(image_to_rgb(msg), pixels[..., ::-1])


def test_reads_data_given_as_a_list_of_ints() -> None:
    msg = bytes_message("mono8", [1, 2, 3, 4, 5, 6], width=3, height=2)

    assert image_to_numpy(msg).tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize("encoding", ["rgb8", "16UC1", "32FC1"])
def test_builds_rclpy_data_as_byte_array(encoding: str) -> None:
    pixels = random_pixels(encoding, seed=4)

    msg = numpy_to_image(pixels, encoding, factory=RclpyLikeFactory(), frame_id="cam")

    assert isinstance(msg.data, array.array)
    assert msg.data.typecode == "B"
    assert msg.header.frame_id == "cam"
    np.testing.assert_array_equal(image_to_numpy(msg), pixels)


# --- colour ----------------------------------------------------------------------------------

RGB = random_pixels("rgb8", seed=5)
ALPHA = random_pixels("mono8", seed=6)[..., np.newaxis]
GRAY = random_pixels("mono8", seed=7)


@pytest.mark.parametrize(
    ("encoding", "pixels", "expected"),
    [
        ("rgb8", RGB, RGB),
        ("bgr8", RGB[..., ::-1], RGB),
        ("8UC3", RGB[..., ::-1], RGB),  # OpenCV's default channel order, as in cv_bridge
        ("rgba8", np.concatenate([RGB, ALPHA], axis=2), RGB),
        ("bgra8", np.concatenate([RGB[..., ::-1], ALPHA], axis=2), RGB),
        ("8UC4", np.concatenate([RGB[..., ::-1], ALPHA], axis=2), RGB),
        ("mono8", GRAY, np.stack([GRAY] * 3, axis=2)),
        ("8UC1", GRAY, np.stack([GRAY] * 3, axis=2)),
        ("mono16", GRAY.astype(np.uint16) << 8 | 0xFF, np.stack([GRAY] * 3, axis=2)),
    ],
)
def test_image_to_rgb_gives_rgb_channel_order(encoding: str, pixels: np.ndarray,
                                              expected: np.ndarray) -> None:
    msg = numpy_to_image(pixels, encoding, factory=FACTORY)

    rgb = image_to_rgb(msg)

    assert rgb.dtype == np.uint8
    assert rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, expected)


# BT.601 limited-range YUV of pure colours: (Y, U, V) -> RGB
YUV_COLOURS = {
    "red": ((81, 90, 240), (255, 0, 0)),
    "green": ((145, 54, 34), (0, 255, 0)),
    "blue": ((41, 240, 110), (0, 0, 255)),
    "white": ((235, 128, 128), (255, 255, 255)),
    "black": ((16, 128, 128), (0, 0, 0)),
}


def pack_yuv(encoding: str, y: int, u: int, v: int, width: int = 4, height: int = 2) -> bytes:
    """Return a solid-colour packed 4:2:2 image in the byte order ``encoding`` declares."""
    macropixel = [u, y, v, y] if encoding == "yuv422" else [y, u, y, v]
    return bytes(macropixel * (width // 2) * height)


@pytest.mark.parametrize("colour", list(YUV_COLOURS))
@pytest.mark.parametrize("encoding", ["yuv422", "yuv422_yuy2", "yuyv"])
def test_yuv_solid_colours_decode_to_rgb(encoding: str, colour: str) -> None:
    (y, u, v), expected = YUV_COLOURS[colour]
    msg = bytes_message(encoding, pack_yuv(encoding, y, u, v), width=4, height=2)

    rgb = image_to_rgb(msg)

    assert rgb.shape == (2, 4, 3)
    np.testing.assert_allclose(rgb.astype(int), np.broadcast_to(expected, rgb.shape), atol=2)


@pytest.mark.parametrize(
    ("encoding", "code"),
    [("yuv422", cv2.COLOR_YUV2RGB_UYVY), ("yuyv", cv2.COLOR_YUV2RGB_YUY2)],
)
def test_yuv_matches_opencv_on_a_padded_image(encoding: str, code: int) -> None:
    packed = random_pixels("yuv422", height=6, width=10, seed=8)
    msg = raw_message(packed, encoding, pad=6)

    np.testing.assert_array_equal(image_to_numpy(msg), packed)
    np.testing.assert_array_equal(image_to_rgb(msg), cv2.cvtColor(packed, code))


def test_yuv_with_odd_width_is_rejected() -> None:
    msg = bytes_message("yuv422", bytes(6), width=3)

    with fails("even width"):
        image_to_rgb(msg)


@pytest.mark.parametrize("encoding", ["16UC1", "16SC1", "32FC1", "64FC1"])
def test_image_to_rgb_rejects_non_colour_encodings(encoding: str) -> None:
    msg = numpy_to_image(random_pixels(encoding), encoding, factory=FACTORY)

    with fails(f"{encoding}.*accepted encodings: .*bgr8"):
        image_to_rgb(msg)


# --- depth -----------------------------------------------------------------------------------

NAN = float("nan")


@pytest.mark.parametrize(
    ("encoding", "values", "big_endian", "expected"),
    [
        ("16UC1", [0, 1234, 1, 65535], False, [NAN, 1.234, 0.001, 65.535]),
        ("16UC1", [0, 1234, 1, 65535], True, [NAN, 1.234, 0.001, 65.535]),
        ("mono16", [1234, 0, 500, 2000], False, [1.234, NAN, 0.5, 2.0]),
        ("32FC1", [1.5, 0.0, -1.0, NAN], False, [1.5, NAN, NAN, NAN]),
        ("32FC1", [float("inf"), float("-inf"), 0.25, 3.0], True, [NAN, NAN, 0.25, 3.0]),
    ],
)
def test_depth_to_metres_follows_rep_118(encoding: str, values: list[float], big_endian: bool,
                                         expected: list[float]) -> None:
    raw = np.array([values], dtype=ENCODINGS[encoding].dtype)
    msg = raw_message(raw, encoding, pad=2, big_endian=big_endian)

    metres = depth_to_metres(msg)

    assert metres.dtype == np.float32
    assert metres.shape == (1, 4)
    np.testing.assert_array_equal(metres, np.array([expected], dtype=np.float32))


@pytest.mark.parametrize("encoding", ["rgb8", "mono8", "8UC1", "16SC1", "64FC1", "yuv422"])
def test_depth_to_metres_rejects_other_encodings(encoding: str) -> None:
    msg = numpy_to_image(random_pixels(encoding), encoding, factory=FACTORY)

    with fails("accepted encodings: 16UC1, mono16, 32FC1"):
        depth_to_metres(msg)


# --- malformed messages ----------------------------------------------------------------------

def fails(match: str | None = None) -> Any:
    """Return the expectation of an ImageEncodingError whose message matches ``match``."""
    return pytest.raises(ImageEncodingError, match=match)


VALID = {"height": 2, "width": 3, "encoding": "mono16", "is_bigendian": 0, "step": 8,
         "data": bytes(16)}


@pytest.mark.parametrize(
    ("fields", "expectation"),
    [
        ({}, does_not_raise()),
        ({"data": bytes(20)}, does_not_raise()),  # trailing bytes after the last row
        ({"data": np.zeros(16, np.uint8)}, does_not_raise()),
        ({"data": array.array("B", bytes(16))}, does_not_raise()),
        ({"data": bytes(15)}, fails("15 data bytes")),
        ({"step": 5}, fails("step 5 < width 3")),
        ({"height": 0}, fails("no pixels")),
        ({"width": 0}, fails("no pixels")),
        ({"encoding": "bayer_rggb8"}, fails("bayer_rggb8")),
        ({"encoding": ""}, fails("unsupported image enc")),
        ({"encoding": None}, fails("unsupported image enc")),
        ({"data": None}, fails("not a byte sequence")),
        ({"data": [300] * 16}, fails("sequence of bytes")),
    ],
)
@pytest.mark.parametrize("convert", [image_to_numpy, image_to_rgb, depth_to_metres])
def test_malformed_messages_raise(convert: Any, fields: dict[str, Any], expectation: Any) -> None:
    msg = SimpleNamespace(**{**VALID, **fields})

    with expectation:
        out = convert(msg)
        assert out.shape[:2] == (2, 3)


@pytest.mark.parametrize(
    ("pixels", "encoding", "expectation"),
    [
        (np.zeros((4, 4), np.float32), "32FC1", does_not_raise()),
        (np.zeros((4, 4), np.float64), "32FC1", fails("float32")),
        (np.zeros((4, 4), np.int16), "16UC1", fails("uint16")),
        (np.zeros((4, 4, 3), np.uint16), "rgb8", fails("uint8")),
        (np.zeros((4, 4), np.uint8), "rgb8", fails(r"\(H, W, 3\)")),
        (np.zeros((4, 4, 4), np.uint8), "rgb8", fails("rgb8")),
        (np.zeros((4, 4, 3), np.uint8), "mono8", fails(r"\(H, W\)")),
        (np.zeros(16, np.uint8), "mono8", fails("shape")),
        (np.zeros((0, 4), np.uint8), "mono8", fails("empty")),
        (np.zeros((4, 4), np.uint8), "bayer_rggb8", fails()),
        (np.zeros((4, 4), np.uint8), "", fails()),
    ],
)
def test_numpy_to_image_validates_shape_and_dtype(pixels: np.ndarray, encoding: str,
                                                  expectation: Any) -> None:
    with expectation:
        msg = numpy_to_image(pixels, encoding, factory=FACTORY)
        assert (msg.height, msg.width) == pixels.shape[:2]


@pytest.mark.parametrize(
    ("encoding", "height", "width", "step", "match"),
    [
        ("rgb8", 100_000, 100_000, 300_000, "over the 2147483648-byte limit"),
        ("mono8", 20_000, 20_000, 20_000, "10 data bytes"),
        ("mono16", 100_000, 100_000, 0, "step 0"),
    ],
)
@pytest.mark.parametrize("convert", [image_to_numpy, image_to_rgb])
def test_absurd_size_claims_fail_fast_without_allocating(
    convert: Any, encoding: str, height: int, width: int, step: int, match: str,
) -> None:
    msg = SimpleNamespace(height=height, width=width, encoding=encoding, is_bigendian=0,
                          step=step, data=np.zeros(10, np.uint8))

    tracemalloc.start()
    started = time.perf_counter()
    try:
        with fails(match):
            convert(msg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert time.perf_counter() - started < 0.5
    assert peak < 256 * 1024
