"""Corpus summary: what a corpus holds (emotions, speakers, audio formats, lengths, bad files).

Labels come from the file names (or manifest), audio facts from the WAV headers only
(`soundfile.info`), so summarising a whole corpus takes seconds and never decodes audio.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import soundfile as sf

from emovae.data.corpus import detect_format, load_corpus


def _read_header(path: Path) -> tuple[Any, str | None]:
    """The `soundfile.info` of `path`, or None and why it cannot be used as audio."""
    try:
        if not path.exists():
            return None, "file not found"
        if path.stat().st_size == 0:
            return None, "empty file (0 bytes)"
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        # libsndfile's own wording ("Format not recognised.") is clearer without the path prefix.
        detail = getattr(exc, "error_string", None) or str(exc)
        return None, f"not a readable audio file: {detail}"
    if info.frames <= 0:
        return None, "no audio frames (0 samples)"
    return info, None


def _sorted_counts(counter: Counter) -> dict:
    return dict(sorted(counter.items()))


def summarize_corpus(root: str | Path, format: str = "auto") -> dict[str, Any]:
    """Describe a corpus with its native emotion labels.

    `emotions`, `speakers` and `n_files` count every item the loader finds (labels come from
    names); `sample_rates`, `channels` and `durations` cover only the readable files, and the
    rest are listed in `bad_files` with a reason instead of raising. Raises `CorpusError` for a
    missing or empty folder and for names that do not fit the format.
    """
    items = load_corpus(root, format=format, label_set="native")
    if format == "auto":
        format = detect_format(Path(root))

    sample_rates: Counter[int] = Counter()
    channels: Counter[int] = Counter()
    durations: list[float] = []
    bad_files: list[dict[str, str]] = []
    for item in items:
        info, problem = _read_header(item.path)
        if info is None:
            bad_files.append({"path": str(item.path), "reason": str(problem)})
            continue
        sample_rates[int(info.samplerate)] += 1
        channels[int(info.channels)] += 1
        durations.append(info.frames / info.samplerate)

    if durations:
        total = sum(durations)
        duration_stats: dict[str, float | None] = {
            "min": round(min(durations), 4),
            "mean": round(total / len(durations), 4),
            "max": round(max(durations), 4),
            "total": round(total, 4),
        }
    else:
        duration_stats = {"min": None, "mean": None, "max": None, "total": 0.0}

    return {
        "root": str(root),
        "format": format,
        "n_files": len(items),
        "emotions": _sorted_counts(Counter(it.emotion for it in items)),
        "speakers": _sorted_counts(Counter(it.speaker for it in items)),
        "sample_rates": _sorted_counts(sample_rates),
        "channels": _sorted_counts(channels),
        "durations": duration_stats,
        "bad_files": bad_files,
    }


def _count_table(title: str, counts: dict, total: int) -> list[str]:
    if not counts:
        return [f"{title}: none"]
    width = max(len(title), *(len(str(key)) for key in counts))
    lines = [f"{title:<{width}}  {'files':>6}  {'share':>6}"]
    for key, count in counts.items():
        share = f"{100 * count / total:.1f}%" if total else "-"
        lines.append(f"{str(key):<{width}}  {count:>6}  {share:>6}")
    return lines


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text report of `summarize_corpus`'s result, for a terminal."""
    n_files = summary["n_files"]
    n_bad = len(summary["bad_files"])
    n_ok = n_files - n_bad
    durations = summary["durations"]
    total = durations["total"] or 0.0
    lines = []
    if "root" in summary:
        lines.append(f"Corpus:   {summary['root']}")
    lines += [
        f"Format:   {summary['format']}",
        f"Files:    {n_files} ({n_bad} unreadable)",
        f"Duration: min {_seconds(durations['min'])}, mean {_seconds(durations['mean'])}, "
        f"max {_seconds(durations['max'])}, total {total / 60:.1f} min",
        "",
    ]
    lines += _count_table("emotion", summary["emotions"], n_files)
    lines.append("")
    lines += _count_table("speaker", summary["speakers"], n_files)
    lines.append("")
    # Audio facts come from readable files only, so their shares are of n_ok.
    lines += _count_table("sample rate (Hz)", summary["sample_rates"], n_ok)
    lines.append("")
    lines += _count_table("channels", summary["channels"], n_ok)
    if n_bad:
        lines += ["", f"Unreadable files ({n_bad}):"]
        lines += [f"  {bad['path']}: {bad['reason']}" for bad in summary["bad_files"]]
    return "\n".join(lines)
