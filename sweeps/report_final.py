"""The sweep report's final-model sections (sweeps.report): the retrained best configuration,
its test metrics and figures, emotion preservation, and the exported audio as judged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeps.report_markdown import MISSING, placed_image, table

FINAL_IMAGES = (
    ("learning_curves", "Learning curves"),
    ("reconstructions", "Reconstructions"),
    ("latent_pca", "Latent space (PCA)"),
)

# Columns of the exported-audio table: (metric suffix, heading). Accuracy columns are followed
# by their ratio to the real clips' value, the ceiling.
AUDIO_COLUMNS = (
    ("cnn_acc", "CNN judge acc"),
    ("smile_acc", "eGeMAPS judge acc"),
    ("cnn_uar", "CNN UAR"),
    ("smile_uar", "eGeMAPS UAR"),
    ("dnsmos", "DNSMOS ovrl"),
    ("dnsmos_sig", "DNSMOS sig"),
    ("dnsmos_n", "DNSMOS clips"),
    ("fd_cnn", "FD (CNN)"),
    ("fd_smile", "FD (eGeMAPS)"),
    ("stoi", "STOI"),
)
AUDIO_SETS = (
    ("real", "real test clips (ceiling)"),
    ("recon", "reconstructions (label withheld)"),
    ("gen", "generated samples (per emotion asked for)"),
    ("conv", "conversions (neutral -> emotion asked for)"),
)

# Groups of the emotion section: (heading, metric-name prefixes, what the numbers say).
EMOTION_GROUPS = (
    (
        "Reconstruction",
        ("test_emotion_", "test_fd_", "test_latent_"),
        "The judge on the real test clips and on the model's reconstructions of them: "
        "`_drop` = real - reconstructed accuracy (positive = emotion lost); `test_fd_recon` = "
        "Frechet distance between the two in the judge's embedding space (lower = closer); "
        "silhouette of the latent means by emotion.",
    ),
    (
        "Judge",
        ("judge_",),
        "The judge's accuracy and unweighted average recall on the real test speakers: the "
        "ceiling for the model's outputs.",
    ),
    (
        "Generation (conditional VAE)",
        ("gen_", "real_"),
        "The judge on samples drawn per emotion: accuracy (overall and per emotion asked for), "
        "Frechet distances to the real test clips, and diversity (generated / real within each "
        "emotion well below 1 = mode collapse).",
    ),
    (
        "Augmentation value",
        ("aug_",),
        "Test accuracy and UAR of a judge trained on real + generated clips vs on real clips "
        "only (one seed: differences of a few points are within seed noise).",
    ),
)


@dataclass(frozen=True)
class EmotionScores:
    """The emotion-preservation metrics on the test speakers, and the judge's confusion matrix
    PNG on generated samples (None for an unconditional model)."""

    metrics: dict[str, Any]
    confusion: Any

    @classmethod
    def from_mapping(cls, emotion: dict[str, Any]) -> EmotionScores:
        return cls(dict(emotion.get("metrics") or {}), emotion.get("confusion"))


@dataclass(frozen=True)
class FinalModel:
    """The best configuration retrained, read from `write_report`'s `final` mapping: "config",
    "metrics", the FINAL_IMAGES paths, "emotion" ({"metrics", "confusion"}) and "audio" (as
    `audio_section` takes it); all optional."""

    config: dict[str, Any]
    metrics: dict[str, Any]
    images: dict[str, Any]  # FINAL_IMAGES key -> the image's path, for those given
    emotion: EmotionScores | None
    audio: dict[str, Any] | None

    @classmethod
    def from_mapping(cls, final: dict[str, Any]) -> FinalModel:
        emotion = final.get("emotion")
        return cls(
            config=final.get("config") or {},
            metrics=final.get("metrics") or {},
            images={key: final[key] for key, _ in FINAL_IMAGES if final.get(key)},
            emotion=None if emotion is None else EmotionScores.from_mapping(emotion),
            audio=final.get("audio"),
        )


def final_lines(final: dict[str, Any], out_dir: Path) -> list[str]:
    """The final model's sections; images elsewhere are copied into out_dir."""
    model = FinalModel.from_mapping(final)
    lines = ["## Final model (best configuration retrained)", ""]
    lines += _mapping_table("Configuration", "field", model.config, "No configuration recorded.")
    lines += _mapping_table("Test metrics", "metric", model.metrics, "No test metrics recorded.")
    for key, caption in FINAL_IMAGES:
        if key in model.images:
            lines += [f"### {caption}", ""]
            lines += placed_image(model.images[key], key, caption, out_dir)
    if model.emotion is not None:
        lines += _emotion_section(model.emotion, out_dir)
    if model.audio is not None:
        lines += audio_section(model.audio)
    return lines


def _mapping_table(heading: str, name: str, values: dict[str, Any], empty: str) -> list[str]:
    lines = [f"### {heading}", ""]
    if not values:
        return lines + [empty, ""]
    return lines + table([name, "value"], [[k, v] for k, v in values.items()])


def audio_section(audio: dict[str, Any]) -> list[str]:
    """The exported WAVs as the two judges and DNSMOS hear them, the real clips first.

    `audio`: {"metrics": the wav_* metrics, "vocoder": the vocoder that wrote the WAVs}."""
    metrics = dict(audio.get("metrics") or {})
    lines = [
        "### Exported audio (what users get)",
        "",
        f"WAVs written through the {audio.get('vocoder', '?')} vocoder, read back and judged: "
        "the project's CNN judge on log-mels extracted again, an eGeMAPS + scikit-learn judge "
        "(openSMILE), DNSMOS P.835, STOI against the original; both judges learnt from the "
        "real training speakers only. `x real` = the set's accuracy / the real clips'.",
        "",
    ]
    rows = _audio_rows(metrics)
    lines += table(_audio_header(), rows) if rows else ["No exported-audio metrics recorded.", ""]
    lines += _dnsmos_by_emotion_table(metrics)
    gains = [[k, v] for k, v in metrics.items() if k.startswith("wav_aug_")]
    if gains:
        lines += [
            "#### Augmentation value (exported samples added to the training speakers)",
            "",
            "Speech emotion recognition trained on real + generated WAVs vs real only, tested "
            "on the real test speakers (one seed; see benchmarks/RESULTS_quality.md for many). "
            "`real_plus_control`: vocoded copies of as many real training clips added instead; "
            "`gain_over_control` is what the samples add beyond more, vocoded, data.",
            "",
        ]
        lines += table(["metric", "value"], gains)
    return lines


# wav_<set>_dnsmos_<suffix> keys that are not an emotion's score.
DNSMOS_PARTS = ("n", "sig", "bak")


def _dnsmos_by_emotion_table(metrics: dict[str, Any]) -> list[str]:
    """DNSMOS overall per set and emotion (the emotion asked for, for samples): where the
    quality is lost."""
    emotions: list[str] = []
    for name, _ in AUDIO_SETS:
        for key in metrics:
            emotion = key.removeprefix(f"wav_{name}_dnsmos_")
            if key != emotion and emotion not in DNSMOS_PARTS and emotion not in emotions:
                emotions.append(emotion)
    if not emotions:
        return []
    rows = [
        [label] + [metrics.get(f"wav_{name}_dnsmos_{e}", MISSING) for e in emotions]
        for name, label in AUDIO_SETS
        if any(f"wav_{name}_dnsmos_{e}" in metrics for e in emotions)
    ]
    return ["#### DNSMOS overall by emotion", ""] + table(["set"] + emotions, rows)


def _audio_header() -> list[str]:
    header = ["set"]
    for suffix, heading in AUDIO_COLUMNS:
        header.append(heading)
        if suffix.endswith("_acc"):
            header.append("x real")
    return header


def _audio_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    """One row per set with any metric; accuracies followed by their ratio to the real clips'."""
    rows = []
    for name, label in AUDIO_SETS:
        if not any(key.startswith(f"wav_{name}_") for key in metrics):
            continue
        row: list[Any] = [label]
        for suffix, _ in AUDIO_COLUMNS:
            value = metrics.get(f"wav_{name}_{suffix}", MISSING)
            row.append(value)
            if suffix.endswith("_acc"):
                ceiling = metrics.get(f"wav_real_{suffix}")
                usable = isinstance(value, float) and ceiling
                row.append(value / ceiling if usable else MISSING)
        rows.append(row)
    return rows


def _emotion_section(emotion: EmotionScores, out_dir: Path) -> list[str]:
    """The emotion metrics in EMOTION_GROUPS (any other under "Other"), then the confusion."""
    lines = ["### Emotion preservation", ""]
    metrics = emotion.metrics
    if not metrics:
        lines += ["No emotion metrics recorded.", ""]
    shown: set[str] = set()
    for heading, prefixes, meaning in EMOTION_GROUPS:
        rows = [[k, v] for k, v in metrics.items() if k.startswith(prefixes) and k not in shown]
        if not rows:
            continue
        shown |= {row[0] for row in rows}
        lines += [f"#### {heading}", "", meaning, ""]
        lines += table(["metric", "value"], rows)
    rest = [[k, v] for k, v in metrics.items() if k not in shown]
    if rest:
        lines += ["#### Other", ""]
        lines += table(["metric", "value"], rest)
    if emotion.confusion:
        caption = "Judge's confusion on generated samples"
        lines += [f"#### {caption}", ""]
        lines += placed_image(emotion.confusion, "emotion_confusion", caption, out_dir)
    return lines
