"""The privileged object state as one feature vector: what the ``oracle`` configuration gives a
policy in place of image features (the ceiling of what any encoder can give it).

From a store's per-step arrays (training) or an environment's ``info`` (evaluation): every
object's position (``<name>_pos``), its yaw as ``sin 4ψ, cos 4ψ`` (a cube looks the same every
90°, so the raw angle would jump where nothing changed) and its half size (``<name>_half``,
which domain randomization varies), and the goal position (``goal_pos``) when the task has one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

#: The feature key of the oracle vector (beside camera names in a policy's ``shape_meta``).
PRIVILEGED = "privileged"
_SUFFIXES = ("_pos", "_yaw", "_half")


def oracle_keys(keys: Iterable[str]) -> list[str]:
    """The privileged keys among ``keys`` that make up the oracle vector, in a fixed order."""
    return sorted(k for k in keys if k.endswith(_SUFFIXES))


def oracle_features(arrays: Mapping[str, np.ndarray], keys: list[str]) -> np.ndarray:
    """``(T, D)`` float32 oracle vectors from per-step arrays (``(T, ...)``) or, for one step,
    from scalars and ``(3,)`` vectors (then ``(D,)``)."""
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(
            f"the oracle needs the privileged state {missing}, which this data does not have "
            f"(it has {sorted(arrays)}); oracle policies run only where the simulator gives it"
        )
    parts = []
    single = np.ndim(arrays[keys[0]]) == (1 if keys[0].endswith("_pos") else 0)
    for key in keys:
        value = np.asarray(arrays[key], dtype=np.float32)
        value = value[None] if single else value
        value = value.reshape(len(value), -1)
        if key.endswith("_yaw"):
            value = np.concatenate([np.sin(4 * value), np.cos(4 * value)], axis=1)
        parts.append(value)
    out = np.concatenate(parts, axis=1).astype(np.float32)
    return out[0] if single else out
