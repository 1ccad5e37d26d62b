"""Quality bars on what the stages made, beside the format rules: a class the cleaning mostly
dropped, a training set that balancing could not even out, a model below an accuracy floor.

Each function returns a :class:`Verdict`; the Dagster checks (:mod:`animal_assets.checks`) report
it, at WARN severity: the outputs stay usable, and the verdict says what to look at.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: A class that loses more than this share of its given images to drops is flagged: on DS801
#: each class loses 11-15 % (its out-of-distribution images and extra copies), so more than half
#: means the outlier step took much of a class for outliers.
MAX_DROP_SHARE = 0.5
#: After balancing, the largest training class may hold at most this many times the images of
#: the smallest (oversampling grows a class at most ``max_factor`` times).
MAX_CLASS_RATIO = 2.0


@dataclass(frozen=True)
class Verdict:
    passed: bool
    description: str
    table: pd.DataFrame = field(default_factory=pd.DataFrame, hash=False)


def drop_shares(given: Sequence[int], dropped: Sequence[int], names: Sequence[str], *,
                max_share: float = MAX_DROP_SHARE) -> Verdict:
    """Each class's share of given images dropped by the cleaning, against ``max_share``."""
    given, dropped = np.asarray(given, dtype=np.int64), np.asarray(dropped, dtype=np.int64)
    share = np.divide(dropped, given, out=np.zeros(len(given)), where=given > 0)
    table = pd.DataFrame({"class": list(names), "given": given, "dropped": dropped,
                          "share": np.round(share, 3)})
    over = table[share > max_share]
    if over.empty:
        return Verdict(True, f"every class keeps at least {1 - max_share:.0%} of its images "
                             f"(most dropped: {table['share'].max():.1%})", table)
    first = over.iloc[0]
    return Verdict(False, f"{len(over)} class(es) lost more than {max_share:.0%} of their images "
                          f"to drops, first {first['class']}: {first['dropped']} of "
                          f"{first['given']}", table)


def class_size_ratio(counts: Sequence[int], names: Sequence[str], *,
                     max_ratio: float = MAX_CLASS_RATIO) -> Verdict:
    """Largest over smallest training class after balancing, over the classes that have
    training images, against ``max_ratio``."""
    counts = np.asarray(counts, dtype=np.int64)
    table = pd.DataFrame({"class": list(names), "images": counts})
    present = counts[counts > 0]
    if len(present) == 0:
        return Verdict(False, "the training set is empty", table)
    ratio = present.max() / present.min()
    smallest = table[counts > 0].sort_values("images").iloc[0]
    text = (f"largest class / smallest = {ratio:.2f} (smallest: {smallest['class']}, "
            f"{smallest['images']} images)")
    if ratio <= max_ratio:
        return Verdict(True, text, table)
    return Verdict(False, f"{text}: over {max_ratio:g}; the smallest class is too rare to be "
                          "balanced by oversampling", table)


def accuracy_floor(balanced_accuracy: float, floor: float, *, where: str = "val_split") -> Verdict:
    """The model's balanced accuracy on ``where`` against ``floor``."""
    text = f"balanced accuracy on {where} {balanced_accuracy:.3f}, floor {floor:.3f}"
    return Verdict(bool(balanced_accuracy >= floor), text if balanced_accuracy >= floor else
                   f"{text}: below the floor")
