"""The finaliser's audio: the WAV sets it exports through the sweep's vocoder, and their
scores once read back (emovae.evaluation.exported_audio)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emovae.audio.export import read_manifest
from emovae.audio.vocoder import load_vocoder
from emovae.checkpoint import load_model
from emovae.dataset import PreparedData
from emovae.evaluation.exported_audio import (
    augmentation_control_rows,
    augmentation_gain,
    prepare_audio_judges,
    score_set,
    wav_set,
)
from emovae.generate import (
    export_conversions,
    export_copy_synthesis,
    export_reconstructions,
    generate,
)
from emovae.judge import TrainedJudge
from emovae.runtime import select_device
from sweeps.final_evaluation import write_metrics_json
from sweeps.space import FinaliseSettings

AUDIO_METRICS_FILE = "audio_metrics.json"


@dataclass
class ExportedAudio:
    """The WAV sets the finaliser writes: manifests (None where a set does not apply)."""

    samples: Path
    reconstructions: Path
    conversions: Path | None
    # Vocoded copies of real training clips, the augmentation test's control.
    control: Path | None = None


def export_audio(
    checkpoint: Path,
    data: PreparedData,
    settings: FinaliseSettings,
    out_dir: Path,
    seed: int,
    device: str,
) -> ExportedAudio:
    """`settings.n_samples` samples, the test split's reconstructions and (conditional model)
    conversions, each a WAV set with its manifest under `out_dir`, through `settings.vocoder`;
    for a conditional model with `settings.audio_metrics` and `settings.augment_control`,
    copies of as many real training clips of each emotion as the samples hold (the
    augmentation test's control)."""
    samples = generate(
        checkpoint,
        settings.n_samples,
        out_dir / "samples",
        seed=seed,
        n_iter=settings.griffin_lim_iters,
        device=device,
        vocoder=settings.vocoder,
    )
    loaded = load_model(checkpoint, select_device(device))
    vocoder = load_vocoder(
        settings.vocoder, loaded.features, device, n_iter=settings.griffin_lim_iters, seed=seed
    )
    reconstructions = export_reconstructions(
        loaded, data.test, vocoder, out_dir / "reconstructions"
    )
    conversions = export_conversions(
        loaded,
        data.test,
        vocoder,
        out_dir / "conversions",
        seed=seed,
        source=settings.conversion_source,
        strength=settings.conversion_strength,
    )
    control = None
    if settings.audio_metrics and settings.augment_control and loaded.model.n_classes:
        _, sample_labels = _labels_of(samples, loaded.label_names)
        rows = augmentation_control_rows(data.train.labels.numpy(), np.array(sample_labels), seed)
        control = export_copy_synthesis(
            loaded, data.train, rows, vocoder, out_dir / "augment_control"
        )
    return ExportedAudio(samples, reconstructions, conversions, control)


def _labels_of(manifest: Path, label_names: list[str]) -> tuple[list[Path], list[int] | None]:
    rows = read_manifest(manifest)
    paths = [manifest.parent / row["file"] for row in rows]
    if not all(row["emotion"] for row in rows):
        return paths, None
    return paths, [label_names.index(row["emotion"]) for row in rows]


def audio_evaluation(
    exported: ExportedAudio,
    data: PreparedData,
    judge: TrainedJudge | None,
    cache_dir: str | Path,
    out_dir: Path,
    seed: int,
    dnsmos_clips: int = 0,
) -> dict[str, float]:
    """The exported WAVs read back and scored (emovae.evaluation.exported_audio): `wav_real_*`
    (the test speakers' real clips: the ceiling), `wav_recon_*`, `wav_gen_*`, `wav_conv_*`,
    and for a conditional model the augmentation test through both judges (`wav_aug_*`).
    Written to `out_dir/audio_metrics.json` too."""
    # After the sweep the machine is the finaliser's: DNSMOS, its slowest judge, uses every core.
    judges = prepare_audio_judges(
        data,
        judge,
        cache_dir,
        seed,
        workers=torch.get_num_threads(),
        dnsmos_clips=dnsmos_clips,
    )
    names = data.label_names
    real = wav_set(judges, "real", data.test.paths, data.test.labels.numpy(), cache_dir)
    metrics = score_set(judges, real)
    recon_paths, _ = _labels_of(exported.reconstructions, names)
    recon = wav_set(judges, "recon", recon_paths, data.test.labels.numpy())
    metrics |= score_set(judges, recon, real, references=real.clips)
    gen_paths, gen_labels = _labels_of(exported.samples, names)
    generated = wav_set(judges, "gen", gen_paths, gen_labels)
    metrics |= score_set(judges, generated, real)
    if exported.conversions is not None:
        conv_paths, conv_labels = _labels_of(exported.conversions, names)
        metrics |= score_set(judges, wav_set(judges, "conv", conv_paths, conv_labels), real)
    if generated.labels is not None:
        seed = judge.config.seed if judge is not None else seed
        control = None
        if exported.control is not None:
            control_paths, control_labels = _labels_of(exported.control, names)
            control = wav_set(judges, "copy", control_paths, control_labels)
        metrics |= augmentation_gain(judges, data, generated, real, seed=seed, control=control)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics_json(out_dir / AUDIO_METRICS_FILE, metrics)
    return metrics
