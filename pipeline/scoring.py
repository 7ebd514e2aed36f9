"""Small score arithmetic shared by the online models and the reviewer-feedback model.

Kept apart from ``pipeline.models`` so that a process that only needs these
(the store writer and the outbox relay import ``pipeline.feedback`` through
``streams.runtime``) does not import river, and with it scipy: about 0.7 s of
CPU at every start of each child.
"""

from __future__ import annotations

import math
from typing import Sequence


def logit(p: float) -> float:
    """log(p / (1 − p)), with p clipped to [0.005, 0.995] so that it stays finite."""
    p = min(max(p, 0.005), 0.995)
    return math.log(p / (1.0 - p))


def clip(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


def roc_auc(scores: Sequence[float], labels: Sequence[int | bool]) -> float | None:
    """Exact ROC AUC by ranks (ties count half); None when one class is missing.

    >>> roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    """
    pairs = sorted(zip(scores, labels), key=lambda pair: pair[0])
    positives = sum(1 for _, y in pairs if y)
    negatives = len(pairs) - positives
    if not positives or not negatives:
        return None
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        mid_rank = (i + j) / 2 + 1
        rank_sum += mid_rank * sum(1 for k in range(i, j + 1) if pairs[k][1])
        i = j + 1
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
