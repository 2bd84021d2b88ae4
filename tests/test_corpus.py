"""Corpus loaders: EmoDB and RAVDESS file names, CSV manifests, format detection, errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from emovae.data.corpus import (
    CorpusError,
    Item,
    detect_format,
    load_corpus,
    parse_emodb_name,
    parse_ravdess_name,
)
from emovae.data.labels import SHARED6, LabelError

EMODB_EMOTION_COUNTS = {
    "anger": 127,
    "boredom": 81,
    "disgust": 46,
    "fear": 69,
    "happiness": 71,
    "sadness": 62,
    "neutral": 79,
}
EMODB_SPEAKER_COUNTS = {
    "03": 49, "08": 58, "09": 43, "10": 38, "11": 55,
    "12": 35, "13": 61, "14": 69, "15": 56, "16": 71,
}  # fmt: skip


def _touch_wavs(folder: Path, names: list[str]) -> Path:
    # Loaders read names only, so empty files are enough for name tests.
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).touch()
    return folder


# --- EmoDB, real recordings -------------------------------------------------------------------


@pytest.mark.emodb
def test_emodb_real_counts(emodb_dir: Path) -> None:
    items = load_corpus(emodb_dir)
    assert len(items) == 535
    assert dict(Counter(it.emotion for it in items)) == EMODB_EMOTION_COUNTS
    assert dict(Counter(it.speaker for it in items)) == EMODB_SPEAKER_COUNTS
    assert items == sorted(items, key=lambda it: str(it.path))
    assert len({it.utterance_id for it in items}) == 535


@pytest.mark.emodb
def test_emodb_real_explicit_format_and_detection(emodb_dir: Path) -> None:
    assert detect_format(emodb_dir) == "emodb"
    assert load_corpus(emodb_dir, format="emodb") == load_corpus(emodb_dir)


@pytest.mark.emodb
def test_emodb_real_shared6_drops_boredom(emodb_dir: Path) -> None:
    items = load_corpus(emodb_dir, label_set="shared6")
    assert len(items) == 535 - EMODB_EMOTION_COUNTS["boredom"] == 454
    assert {it.emotion for it in items} == set(SHARED6)


# --- EmoDB names ------------------------------------------------------------------------------


def test_parse_emodb_name() -> None:
    item = parse_emodb_name(Path("wav/03a01Fa.wav"))
    assert item == Item(Path("wav/03a01Fa.wav"), "happiness", "03", "03a01Fa")
    assert parse_emodb_name(Path("16b10Wc.wav")).emotion == "anger"
    assert parse_emodb_name(Path("08a02Lb.wav")).emotion == "boredom"


def test_parse_emodb_unknown_emotion_code_names_file_and_code() -> None:
    with pytest.raises(LabelError) as info:
        parse_emodb_name(Path("wav/03a01Xa.wav"))
    message = str(info.value)
    assert "03a01Xa.wav" in message
    assert "'X'" in message


@pytest.mark.parametrize("name", ["3a01Fa.wav", "03a01fa.wav", "03a01F.wav", "03a01Fa_copy.wav"])
def test_parse_emodb_bad_name(name: str) -> None:
    with pytest.raises(CorpusError, match=name.removesuffix(".wav")):
        parse_emodb_name(Path(name))


def test_load_emodb_unknown_code_in_folder(tmp_path: Path) -> None:
    root = _touch_wavs(tmp_path / "emodb", ["03a01Fa.wav", "03a01Qa.wav"])
    with pytest.raises(LabelError, match=r"03a01Qa\.wav.*'Q'"):
        load_corpus(root)


# --- RAVDESS ----------------------------------------------------------------------------------


def test_parse_ravdess_name() -> None:
    path = Path("Actor_12/03-01-05-01-02-01-12.wav")
    assert parse_ravdess_name(path) == Item(path, "anger", "12", "03-01-05-01-02-01-12")
    assert parse_ravdess_name(Path("03-02-05-01-02-01-12.wav")) is None  # song


@pytest.mark.parametrize(
    ("code", "emotion"),
    [
        ("01", "neutral"), ("02", "calm"), ("03", "happiness"), ("04", "sadness"),
        ("05", "anger"), ("06", "fear"), ("07", "disgust"), ("08", "surprise"),
    ],
)  # fmt: skip
def test_parse_ravdess_emotions(code: str, emotion: str) -> None:
    assert parse_ravdess_name(Path(f"03-01-{code}-01-01-01-01.wav")).emotion == emotion


def test_parse_ravdess_unknown_emotion_code() -> None:
    with pytest.raises(LabelError, match=r"03-01-09-01-01-01-01\.wav.*'09'"):
        parse_ravdess_name(Path("03-01-09-01-01-01-01.wav"))


def test_parse_ravdess_bad_name() -> None:
    with pytest.raises(CorpusError, match="03-01-05-01-02-01"):
        parse_ravdess_name(Path("03-01-05-01-02-01.wav"))


def test_ravdess_tree_speech_only(make_ravdess) -> None:
    root = make_ravdess()
    assert len(list(root.rglob("*.wav"))) == 15
    items = load_corpus(root)
    assert len(items) == 12
    assert all(it.utterance_id.split("-")[1] == "01" for it in items)
    assert Counter(it.emotion for it in items) == {
        "neutral": 3, "happiness": 3, "anger": 3, "surprise": 3,
    }  # fmt: skip
    assert Counter(it.speaker for it in items) == {"01": 4, "02": 4, "03": 4}
    for item in items:
        assert item.path.parent.name == f"Actor_{item.speaker}"
    assert load_corpus(root, format="ravdess") == items


def test_ravdess_shared6_drops_calm_and_surprise(make_ravdess) -> None:
    root = make_ravdess(actors=(1,), emotions=("01", "02", "05", "08"), song=False)
    assert {it.emotion for it in load_corpus(root)} == {"neutral", "calm", "anger", "surprise"}
    assert {it.emotion for it in load_corpus(root, label_set="shared6")} == {"neutral", "anger"}


def test_ravdess_only_song_files_is_an_error(tmp_path: Path) -> None:
    root = _touch_wavs(tmp_path / "Actor_01", ["03-02-03-01-01-01-01.wav"]).parent
    with pytest.raises(CorpusError, match="only RAVDESS song files"):
        load_corpus(root)


# --- format detection -------------------------------------------------------------------------


def test_detect_format(tmp_path: Path, make_ravdess) -> None:
    assert detect_format(make_ravdess()) == "ravdess"
    assert detect_format(_touch_wavs(tmp_path / "emodb", ["03a01Fa.wav", "16b10Wc.wav"])) == "emodb"
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,emotion,speaker\n")
    assert detect_format(manifest) == "manifest"


def test_detect_format_rejects_other_files(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(CorpusError, match="notes.txt"):
        detect_format(notes)


def test_unrecognised_names(tmp_path: Path) -> None:
    root = _touch_wavs(tmp_path / "mine", ["03a01Fa.wav", "hello.wav"])
    with pytest.raises(CorpusError, match=r"cannot tell the corpus format.*hello\.wav"):
        load_corpus(root)
    with pytest.raises(CorpusError, match=r"hello\.wav.*not an EmoDB file name"):
        load_corpus(root, format="emodb")
    with pytest.raises(CorpusError, match=r"03a01Fa\.wav.*not a RAVDESS file name"):
        load_corpus(root, format="ravdess")


def test_mixed_emodb_and_ravdess_names(tmp_path: Path) -> None:
    root = _touch_wavs(tmp_path / "mixed", ["03a01Fa.wav", "03-01-05-01-02-01-12.wav"])
    with pytest.raises(CorpusError, match="mixes EmoDB and RAVDESS"):
        load_corpus(root)


# --- manifest ---------------------------------------------------------------------------------


def test_manifest_relative_and_absolute_paths(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "b.wav"
    manifest = tmp_path / "corpus" / "list.csv"
    manifest.parent.mkdir()
    manifest.write_text(
        f"path,emotion,speaker\naudio/a.wav,Anger, spk1 \n{elsewhere},neutral,spk2\n"
    )
    items = load_corpus(manifest)
    assert load_corpus(manifest, format="manifest") == items
    by_id = {it.utterance_id: it for it in items}
    assert by_id["a"] == Item(tmp_path / "corpus" / "audio" / "a.wav", "anger", "spk1", "a")
    assert by_id["b"] == Item(elsewhere, "neutral", "spk2", "b")


def test_manifest_missing_column(tmp_path: Path) -> None:
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label\na.wav,anger\n")
    with pytest.raises(CorpusError, match=r"list\.csv.*column\(s\) emotion, speaker"):
        load_corpus(manifest)


def test_manifest_empty_field_names_line(tmp_path: Path) -> None:
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,emotion,speaker\na.wav,anger,s1\nb.wav,,s1\n")
    with pytest.raises(CorpusError, match=r"list\.csv:3: empty"):
        load_corpus(manifest)


def test_manifest_without_rows(tmp_path: Path) -> None:
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,emotion,speaker\n")
    with pytest.raises(CorpusError, match="no rows"):
        load_corpus(manifest)


def test_manifest_format_needs_a_csv_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="csv"):
        load_corpus(tmp_path, format="manifest")


# --- folder and argument errors ---------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus(tmp_path / "nope")


@pytest.mark.parametrize("format", ["auto", "emodb", "ravdess"])
def test_empty_folder(tmp_path: Path, format: str) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "readme.txt").write_text("no audio here")
    with pytest.raises(CorpusError, match="no .wav files found"):
        load_corpus(tmp_path, format=format)


def test_folder_format_on_a_file(tmp_path: Path) -> None:
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,emotion,speaker\n")
    with pytest.raises(CorpusError, match="expected a folder of emodb WAV files"):
        load_corpus(manifest, format="emodb")


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="format: unknown value 'wav'"):
        load_corpus(tmp_path, format="wav")


def test_unknown_label_set(tmp_path: Path) -> None:
    root = _touch_wavs(tmp_path / "emodb", ["03a01Fa.wav"])
    with pytest.raises(LabelError, match="label_set: unknown value 'shared7'"):
        load_corpus(root, label_set="shared7")


def test_uppercase_wav_suffix_and_nested_folders(tmp_path: Path) -> None:
    root = tmp_path / "emodb"
    _touch_wavs(root / "a", ["03a01Fa.WAV"])
    _touch_wavs(root / "b", ["08a01Na.wav"])
    assert [it.utterance_id for it in load_corpus(root)] == ["03a01Fa", "08a01Na"]
