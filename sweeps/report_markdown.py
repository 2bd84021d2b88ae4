"""Markdown pieces of the sweep report (sweeps.report): table cells and tables, image links,
the line that replaces a figure which could not be drawn, and images placed beside the report."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sweeps.report_analysis import plain

MISSING = object()  # a value a record lacks, shown apart from a sampled None


def cell(value: Any) -> str:
    """A table cell: numbers to 4 significant digits, pipes and newlines escaped."""
    value = plain(value)
    if value is MISSING:
        text = "—"
    elif isinstance(value, bool):
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table and the blank line after it."""
    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def first_line(error: str | None) -> str:
    """An error's first non-blank line: the message, without the traceback below it."""
    if not error:
        return "(no error message)"
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return "(no error message)"


def image(alt: str, path: Path, out_dir: Path) -> list[str]:
    """A link to an image in out_dir, relative so the report folder can be moved."""
    return [f"![{alt}]({path.relative_to(out_dir).as_posix()})", ""]


def not_drawn(reason: str) -> list[str]:
    return [f"_Not drawn: {reason}._", ""]


def drawn_or_not(error: str | None, alt: str, path: Path, out_dir: Path, failure: str) -> list[str]:
    """The image's link, or why it is missing: `failure` is the reason's text before the error
    (the plotter's own error, or Optuna's)."""
    if error is None:
        return image(alt, path, out_dir)
    return not_drawn(f"{failure} ({error})")


def place_image(source: Any, key: str, out_dir: Path) -> Path | None:
    """The image inside out_dir (copied there if it lies elsewhere); None if it is missing."""
    path = Path(source)
    if not path.is_file():
        return None
    resolved, root = path.resolve(), out_dir.resolve()
    if resolved.is_relative_to(root):
        return out_dir / resolved.relative_to(root)
    target = out_dir / f"final_{key}{path.suffix or '.png'}"
    shutil.copyfile(path, target)
    return target


def placed_image(source: Any, key: str, caption: str, out_dir: Path) -> list[str]:
    """An image given by path (the finaliser's figures), linked from out_dir, or why not."""
    placed = place_image(source, key, out_dir)
    if placed is None:
        return not_drawn(f"image not found at {source}")
    return image(caption, placed, out_dir)
