"""Corpus loaders: a folder (or CSV manifest) -> a list of `Item`s, by the corpus's file names.

- EmoDB: `SSTTTEV.wav`, e.g. `03a01Fa.wav` (speaker, text, German emotion initial, version).
- RAVDESS: `Actor_XX/MM-VC-EE-II-SS-RR-AA.wav`; speech only (vocal channel 01), song excluded.
- Manifest: a CSV with columns `path,emotion,speaker` (paths relative to the CSV's folder).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from emovae.data.labels import LabelError, select_label_set

FORMATS = ("auto", "emodb", "ravdess", "manifest")

EMODB_EMOTIONS = {
    "W": "anger",  # Wut / Aerger
    "L": "boredom",  # Langeweile
    "E": "disgust",  # Ekel
    "A": "fear",  # Angst
    "F": "happiness",  # Freude
    "T": "sadness",  # Trauer
    "N": "neutral",
}
EMODB_NAME = re.compile(
    r"^(?P<speaker>\d{2})(?P<text>[a-z]\d{2})(?P<emotion>[A-Z])(?P<version>[a-z])$"
)

RAVDESS_EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happiness",
    "04": "sadness",
    "05": "anger",
    "06": "fear",
    "07": "disgust",
    "08": "surprise",
}
RAVDESS_NAME = re.compile(
    r"^(?P<modality>\d{2})-(?P<channel>\d{2})-(?P<emotion>\d{2})-(?P<intensity>\d{2})"
    r"-(?P<statement>\d{2})-(?P<repetition>\d{2})-(?P<actor>\d{2})$"
)
RAVDESS_SPEECH_CHANNEL = "01"


class CorpusError(ValueError):
    """A corpus folder or file name that cannot be read as the expected format."""


@dataclass(frozen=True)
class Item:
    path: Path
    emotion: str  # canonical English name (see emovae.data.labels)
    speaker: str
    utterance_id: str


def _wav_files(root: Path) -> list[Path]:
    # Hidden files are skipped: macOS leaves `._03a01Fa.wav` resource forks beside real WAVs.
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() == ".wav" and not p.name.startswith(".") and p.is_file()
    )


def parse_emodb_name(path: Path) -> Item:
    match = EMODB_NAME.match(path.stem)
    if match is None:
        raise CorpusError(
            f"{path}: not an EmoDB file name (expected SSTTTEV.wav, e.g. 03a01Fa.wav)"
        )
    code = match["emotion"]
    if code not in EMODB_EMOTIONS:
        raise LabelError(
            f"{path}: unknown EmoDB emotion code '{code}' (expected one of {''.join(EMODB_EMOTIONS)})"
        )
    return Item(path, EMODB_EMOTIONS[code], match["speaker"], path.stem)


def parse_ravdess_name(path: Path) -> Item | None:
    """The item for a RAVDESS speech file; None for a song file (vocal channel 02)."""
    match = RAVDESS_NAME.match(path.stem)
    if match is None:
        raise CorpusError(
            f"{path}: not a RAVDESS file name (expected MM-VC-EE-II-SS-RR-AA.wav, "
            "e.g. 03-01-05-01-02-01-12.wav)"
        )
    if match["channel"] != RAVDESS_SPEECH_CHANNEL:
        return None
    code = match["emotion"]
    if code not in RAVDESS_EMOTIONS:
        raise LabelError(f"{path}: unknown RAVDESS emotion code '{code}' (expected 01-08)")
    return Item(path, RAVDESS_EMOTIONS[code], match["actor"], path.stem)


def load_manifest(csv_path: Path) -> list[Item]:
    # utf-8-sig: spreadsheet programs often save CSVs with a byte-order mark.
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "emotion", "speaker"} - set(reader.fieldnames or [])
        if missing:
            raise CorpusError(
                f"{csv_path}: manifest lacks column(s) {', '.join(sorted(missing))} "
                "(expected header path,emotion,speaker)"
            )
        items = []
        for line, row in enumerate(reader, start=2):
            if not row["path"] or not row["emotion"] or not row["speaker"]:
                raise CorpusError(f"{csv_path}:{line}: empty path, emotion or speaker")
            path = Path(row["path"].strip())
            if not path.is_absolute():
                path = csv_path.parent / path
            items.append(
                Item(path, row["emotion"].strip().lower(), row["speaker"].strip(), path.stem)
            )
    if not items:
        raise CorpusError(f"{csv_path}: manifest has a header but no rows")
    return items


def detect_format(root: Path) -> str:
    """Guess the format from the file names: a CSV file -> manifest, else EmoDB or RAVDESS names."""
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "manifest"
        raise CorpusError(f"{root}: expected a corpus folder or a .csv manifest")
    wavs = _wav_files(root)
    if not wavs:
        raise CorpusError(f"{root}: no .wav files found (empty corpus folder?)")
    stems = [w.stem for w in wavs]
    if all(RAVDESS_NAME.match(s) for s in stems):
        return "ravdess"
    if all(EMODB_NAME.match(s) for s in stems):
        return "emodb"
    bad = next(
        (w for w in wavs if not (EMODB_NAME.match(w.stem) or RAVDESS_NAME.match(w.stem))), None
    )
    if bad is None:
        raise CorpusError(
            f"{root}: mixes EmoDB and RAVDESS file names; use one corpus per folder "
            "or a CSV manifest (path,emotion,speaker)"
        )
    raise CorpusError(
        f"{root}: cannot tell the corpus format ({bad.name} is neither an EmoDB nor a RAVDESS "
        "name); pass a CSV manifest (path,emotion,speaker) or set the format explicitly"
    )


def load_corpus(root: str | Path, format: str = "auto", label_set: str = "native") -> list[Item]:
    """All items of a corpus, sorted by path, restricted to `label_set`."""
    root = Path(root)
    if not root.exists():
        raise CorpusError(f"{root}: corpus path does not exist")
    if format not in FORMATS:
        raise CorpusError(
            f"format: unknown value '{format}' (expected one of {', '.join(FORMATS)})"
        )
    if format == "auto":
        format = detect_format(root)
    if format == "manifest":
        if not root.is_file():
            raise CorpusError(f"{root}: format 'manifest' expects a .csv file, got a folder")
        items = load_manifest(root)
    else:
        if not root.is_dir():
            raise CorpusError(f"{root}: expected a folder of {format} WAV files")
        wavs = _wav_files(root)
        if not wavs:
            raise CorpusError(f"{root}: no .wav files found (empty corpus folder?)")
        if format == "emodb":
            items = [parse_emodb_name(w) for w in wavs]
        else:
            items = [it for it in map(parse_ravdess_name, wavs) if it is not None]
            if not items:
                raise CorpusError(f"{root}: only RAVDESS song files (vocal channel 02), no speech")
    keep = select_label_set([it.emotion for it in items], label_set)
    items = sorted(
        (it for it, k in zip(items, keep, strict=True) if k), key=lambda it: str(it.path)
    )
    if not items:
        raise CorpusError(f"{root}: no items left for label set '{label_set}'")
    return items
