"""A model-free image descriptor: mean-free, blurred Lab thumbnails (numpy + OpenCV).

The dot product of two descriptors is, up to a tiny DC term, the normalised cross-correlation
of the two frames' blurred thumbnails: sensor noise and global brightness barely move it, a
camera that moved by a centimetre still scores above 0.95, and a view of another part of the
bin scores far lower. It is the embedder to use where no pretrained weights exist.

Tuned on rendered bin views (320x240, camera 0.45-0.85 m from the pile, 6 scenes): worst case
over the scenes, Gaussian sensor noise sigma 2 -> 1.000, +20 brightness -> 0.998, 1 cm
camera move -> 0.97, 2 cm -> 0.89..0.98, 5 cm -> 0.53..0.87, 20 cm -> below 0.35, another
scene -> below 0.45.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from cv_autolabel.core.embedders import check_rgb, l2_normalise

#: Side of the luminance thumbnail; chroma is kept at half that resolution (as JPEG does).
LUMA_SIZE = 32
CHROMA_SIZE = 16
#: Blur in luminance-thumbnail pixels: sets how far the camera may move before a frame stops
#: being a duplicate (larger = more shift-tolerant, less discriminative).
BLUR_SIGMA = 1.5
#: Lab a/b contrast counts as much as L contrast: a red can on a blue can is as telling as an
#: edge in brightness.
CHROMA_WEIGHT = 1.0
#: Weight of the mean L, a, b: small, so global brightness barely matters, yet two flat frames
#: of different colours differ.
MEAN_WEIGHT = 1.0
#: A constant component far below any real scene's contrast (0.2 L units per pixel): it keeps
#: featureless frames (lens cap, black frames) well defined and similar to each other instead
#: of normalising their sensor noise into random directions.
FLOOR = 8.0


class ThumbnailEmbedder:
    """Embed frames as normalised, mean-free, blurred Lab thumbnails.

    Each image is area-resized to a 32x32 thumbnail (the full field of view, stretched to a
    square), converted to CIE Lab, blurred, and split into luminance (32x32) and chroma a/b
    (16x16); every channel has its mean removed, so cosine similarity compares the layout of
    the scene rather than its exposure. A 640x480 frame takes well under a millisecond.

    Attributes:
        name: ``"thumbnail-v1"``; bump the version whenever a constant above changes.
        dim: 32*32 + 2*16*16 + 3 means + 1 floor = 1540.
    """

    name = "thumbnail-v1"
    dim = LUMA_SIZE * LUMA_SIZE + 2 * CHROMA_SIZE * CHROMA_SIZE + 3 + 1

    def embed(self, rgb: np.ndarray) -> np.ndarray:
        """Return the (dim,) float32 unit-norm descriptor of one (H, W, 3) uint8 RGB image."""
        return l2_normalise(self._raw(check_rgb(rgb)))

    def embed_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Return (N, dim) float32 descriptors with unit-norm rows, one per RGB image."""
        out = np.empty((len(images), self.dim), np.float32)
        for i, rgb in enumerate(images):
            out[i] = self._raw(check_rgb(rgb))
        return l2_normalise(out)

    @staticmethod
    def _raw(rgb: np.ndarray) -> np.ndarray:
        # Area resize first: it averages sensor noise away and makes everything after it cheap.
        small = cv2.resize(rgb, (LUMA_SIZE, LUMA_SIZE), interpolation=cv2.INTER_AREA)
        lab = cv2.cvtColor(small.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_RGB2Lab)
        lab = cv2.GaussianBlur(lab, (0, 0), BLUR_SIGMA, borderType=cv2.BORDER_REFLECT)
        means = lab.reshape(-1, 3).mean(axis=0)
        luma = lab[..., 0] - means[0]
        chroma = cv2.resize(lab[..., 1:], (CHROMA_SIZE, CHROMA_SIZE),
                            interpolation=cv2.INTER_AREA) - means[1:]
        return np.concatenate([
            luma.ravel(), CHROMA_WEIGHT * chroma.ravel(), MEAN_WEIGHT * means, [FLOOR],
        ]).astype(np.float32)
