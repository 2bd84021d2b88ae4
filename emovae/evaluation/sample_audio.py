"""A trial's view of the audio it would export: samples vocoded as the finaliser exports them,
and their Frechet distance to the real validation clips in eGeMAPS space (`wav_gen_fd_smile`).

The CNN judge's distance on the decoder's log-mels (`gen_fd`) forgives what listeners hear in
the vocoded audio; on EmoDB this distance on the exported WAVs followed DNSMOS and the eGeMAPS
judge more closely (benchmarks/RESULTS_quality.md, "Where the samples' gap lies" and "The
sweep hears its samples", which also says where it did not). It costs a vocoder pass and an
openSMILE extraction per sample, so a trial computes it only on its emotion epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.pipeline import Pipeline

from emovae.audio.export import limit_peak
from emovae.audio.vocoder import Vocoder, load_vocoder
from emovae.dataset import PreparedData
from emovae.emotion import frechet_distance
from emovae.evaluation.smile_judge import (
    egemaps,
    egemaps_cache,
    egemaps_of_files,
    fit_egemaps_space,
)
from emovae.features import AudioError, Normalizer
from emovae.generate import vocode

AUDIO_FD_KEY = "wav_gen_fd_smile"


@dataclass
class SampleAudioScorer:
    """What scoring samples as audio needs, prepared once per trial."""

    vocoder: Vocoder
    normalizer: Normalizer  # the VAE's z-scoring, undone before vocoding
    space: Pipeline  # eGeMAPS standardised with the training clips (`fit_egemaps_space`)
    real: np.ndarray  # (N, 88) the real validation clips in `space`


def real_egemaps(data: PreparedData, cache_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """eGeMAPS of the real training (for the standardisation) and validation WAVs, extracted
    into the data cache's eGeMAPS entries (`egemaps_cache`) or read from them. The clips are
    read whole, as the finaliser reads its test clips."""
    cache = egemaps_cache(cache_dir)
    return egemaps_of_files(data.train.paths, cache), egemaps_of_files(data.val.paths, cache)


def prepare_sample_audio(
    data: PreparedData, vocoder: str, cache_dir: str | Path, device: str | torch.device = "cpu"
) -> SampleAudioScorer:
    """The `vocoder` the finaliser exports with, and the real clips' eGeMAPS (`real_egemaps`)."""
    train, val = real_egemaps(data, cache_dir)
    space = fit_egemaps_space(train)
    real = space.transform(val)
    return SampleAudioScorer(
        load_vocoder(vocoder, data.features, device), data.normalizer, space, real
    )


def sample_audio_metrics(
    scorer: SampleAudioScorer, samples: torch.Tensor, prefix: str = ""
) -> dict[str, float]:
    """`<prefix>wav_gen_fd_smile` of decoded samples (N, 1, n_mels, frames), z-scored like the
    VAE's data. NaN when a sample has no voice for openSMILE to measure (silent or too short):
    such a set is not scored rather than scored on the clips that happened to be measurable.
    Compare only values from equal numbers of samples (see `frechet_distance`)."""
    clips = limit_peak(vocode(samples, scorer.normalizer, scorer.vocoder))
    try:
        features = egemaps(list(clips), scorer.vocoder.features.sample_rate)
    except AudioError:
        return {f"{prefix}{AUDIO_FD_KEY}": math.nan}
    distance = frechet_distance(scorer.space.transform(features), scorer.real)
    return {f"{prefix}{AUDIO_FD_KEY}": distance}
