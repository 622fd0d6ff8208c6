"""Rigid-body helpers: rotations as 3x3 matrices and ROS (x, y, z, w) quaternions."""

from __future__ import annotations

import numpy as np


def quat_to_matrix(q: np.ndarray | tuple[float, float, float, float]) -> np.ndarray:
    """Return the 3x3 rotation matrix of a unit quaternion ``(x, y, z, w)`` (ROS order).

    Example:
        >>> quat_to_matrix((0.0, 0.0, 0.0, 1.0)).tolist()
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """Return the unit quaternion ``(x, y, z, w)`` with ``w >= 0`` of a rotation matrix.

    Example:
        >>> matrix_to_quat(np.eye(3)).tolist()
        [0.0, 0.0, 0.0, 1.0]
    """
    m = np.asarray(r, dtype=np.float64)
    trace = np.trace(m)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0, 0.0, 0.0, (m[k, j] - m[j, k]) / s]
        q[i], q[j], q[k] = s / 4, (m[j, i] + m[i, j]) / s, (m[k, i] + m[i, k]) / s
    q = np.asarray(q) / np.linalg.norm(q)
    return q if q[3] >= 0 else -q


def look_at_optical(eye: np.ndarray, target: np.ndarray,
                    up: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Return R_world_optical for a camera at ``eye`` looking at ``target``.

    The columns are the optical axes in world coordinates: x right, y down, z forward
    (REP 103 ``*_optical_frame``). ``up`` must not be parallel to the viewing direction.
    """
    z = np.asarray(target, dtype=np.float64) - np.asarray(eye, dtype=np.float64)
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    norm = np.linalg.norm(x)
    if norm < 1e-9:
        msg = "camera looks along the up vector; the roll is undefined"
        raise ValueError(msg)
    x /= norm
    return np.column_stack([x, np.cross(z, x), z])
