"""Emotion names shared by every corpus loader, and the label sets a user can train on."""

from __future__ import annotations

# Canonical English names. Loaders map their corpus's codes onto these.
SHARED6 = ("anger", "disgust", "fear", "happiness", "neutral", "sadness")
"""The six emotions EmoDB and RAVDESS have in common (the paper's label set)."""

LABEL_SETS = ("native", "shared6")


class LabelError(ValueError):
    """An unknown emotion code or label set."""


def select_label_set(emotions: list[str], label_set: str) -> list[bool]:
    """Which items to keep for `label_set`: all for 'native', the common six for 'shared6'."""
    if label_set == "native":
        return [True] * len(emotions)
    if label_set == "shared6":
        return [emotion in SHARED6 for emotion in emotions]
    raise LabelError(
        f"label_set: unknown value '{label_set}' (expected one of {', '.join(LABEL_SETS)})"
    )


def label_names(emotions: list[str]) -> list[str]:
    """Label encoding: the sorted distinct emotions present. Index i encodes label_names[i]."""
    return sorted(set(emotions))
