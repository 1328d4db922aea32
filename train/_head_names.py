"""The heads' names and the input branches each one reads, without Keras.

This table is the one list of head names: ``ExperimentConfig.head`` (and so pipeline.yaml's
schema), ``w2v2ser train --head`` and every "does this head read a fusion branch?" question derive
from it, and :mod:`w2v2ser.train._heads` (which imports Keras) refuses to import when its
``HEADS`` or a head's ``_BRANCHES`` disagree with it. A new head: its class in ``_heads.HEADS``
and one line here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FUSION_BRANCH", "HEAD_BRANCHES", "fusion_heads", "reads_fusion"]

FUSION_BRANCH = "fusion"

#: Head name -> the input branches its graph reads ("main", and "fusion" for a second feature).
HEAD_BRANCHES: dict[str, tuple[str, ...]] = {
    "dense": ("main",),
    "lstm": ("main",),
    "fusion": ("main", FUSION_BRANCH),
}


def reads_fusion(head: Any) -> bool:
    """Whether ``head`` (a head name; anything else reads no fusion branch) reads a fusion branch."""
    return isinstance(head, str) and FUSION_BRANCH in HEAD_BRANCHES.get(head, ())


def fusion_heads() -> list[str]:
    """The names of the heads that read a fusion branch."""
    return [name for name, branches in HEAD_BRANCHES.items() if FUSION_BRANCH in branches]
