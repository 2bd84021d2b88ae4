"""A synthetic emotional-speech corpus, generated deterministically (no download, no real data).

Each clip is a formant synthesis of a short CV-syllable "sentence": a Rosenberg glottal pulse
train driven by an F0 contour (declination, accents on stressed syllables, slow drift, jitter,
shimmer, optional creak) with aspiration noise and a spectral-tilt filter, shaped per syllable by
cascaded second-order formant resonators; consonants are noise bursts, fricative noise or voiced
sonorants. Emotions change pitch level and range, speaking rate, loudness, spectral tilt, voice
quality and formant positions, roughly as reported in the vocal-emotion literature (e.g. Scherer
2003, Banse & Scherer 1996). Every utterance draws its own random variation around its emotion's
profile, so the classes overlap as real acted speech does.

Files are written with EmoDB names (`SSTTTEV.wav`) so `emovae.data.corpus.load_corpus` reads
them like the real corpus.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import sosfilt
from tqdm import tqdm

from emovae.data.corpus import EMODB_EMOTIONS
from emovae.data.voice import bandpass_sos, fade, glottal_source, resonator_sos
from emovae.runtime import content_key

# Bump whenever the generated audio changes, so cached corpora of the old generator are not reused.
GENERATOR_VERSION = 1

PEAK_DBFS = -3.0
MAX_SPEAKERS = 99  # EmoDB speaker ids have two digits


@dataclass(frozen=True)
class EmotionProfile:
    pitch_st: float  # F0 level relative to the speaker's neutral level, semitones
    range_st: float  # F0 accent height on stressed syllables, semitones
    rate: float  # syllables per second
    loudness: float  # peak level relative to PEAK_DBFS (linear, <= 1)
    tilt: float  # one-pole low-pass coefficient on the source: larger = steeper tilt, darker
    jitter: float  # cycle-to-cycle period perturbation (relative sd)
    shimmer: float  # cycle-to-cycle amplitude perturbation (relative sd)
    creak: float  # depth of period doubling (alternating cycles), 0 = modal voice
    breath: float  # aspiration noise relative to the voiced source
    open_quotient: float  # share of the glottal cycle the glottis is open; low = pressed voice
    formant_shift: float  # factor on F1-F3: jaw opening and smiling raise them
    declination_st: float  # F0 drop over the utterance, semitones
    pause: float  # pause between repetitions of the text, seconds


# Keyed by EmoDB emotion code. Neutral is the reference; the others follow the direction of the
# literature's findings, exaggerated enough to survive the per-utterance variation below.
# fmt: off
EMOTION_PROFILES: dict[str, EmotionProfile] = {
    code: EmotionProfile(*row) for code, row in {
        # pitch range rate  loud  tilt  jitter shimm creak breath OQ   formant decl pause
        "N": (0.0,  3.0, 4.5, 0.55, 0.55, 0.006, 0.035, 0.00, 0.05, 0.60, 1.00, 3.0, 0.15),  # neutral
        "W": (5.5,  5.5, 5.4, 1.00, 0.10, 0.010, 0.050, 0.00, 0.03, 0.42, 1.07, 2.0, 0.10),  # anger
        "F": (4.0,  9.0, 4.9, 0.75, 0.45, 0.007, 0.040, 0.00, 0.06, 0.58, 1.04, 1.0, 0.12),  # happy
        "A": (7.0,  3.0, 6.0, 0.60, 0.45, 0.030, 0.070, 0.00, 0.18, 0.60, 1.02, 0.5, 0.08),  # fear
        "T": (-1.5, 1.5, 3.1, 0.30, 0.85, 0.012, 0.060, 0.05, 0.20, 0.72, 0.96, 2.0, 0.30),  # sad
        "L": (-3.0, 0.7, 3.6, 0.45, 0.70, 0.006, 0.040, 0.10, 0.08, 0.66, 0.97, 1.0, 0.25),  # bored
        "E": (-1.0, 4.0, 3.3, 0.55, 0.55, 0.025, 0.120, 0.40, 0.06, 0.52, 0.98, 3.5, 0.25),  # disgust
    }.items()
}
# fmt: on

# EmoDB text codes; the "sentences" are invented CV syllable strings, upper case = stressed.
TEXTS: dict[str, tuple[str, ...]] = {
    "a01": ("de", "LA", "pe", "LI", "ka", "fe", "MA", "sche"),
    "a02": ("da", "TI", "so", "NE", "bu", "KA", "le"),
    "a04": ("HO", "te", "BE", "ni", "ga", "TO", "ma"),
    "a05": ("da", "FO", "ma", "SI", "te", "RU", "ge"),
    "a07": ("I", "se", "MO", "ga", "TI", "lo", "be"),
    "b01": ("NA", "be", "SU", "ke", "DI", "lo", "ta"),
    "b02": ("HO", "la", "ni", "GE", "pu", "SCHA", "mi"),
    "b03": ("e", "RA", "to", "MU", "se", "KI", "na"),
    "b09": ("GI", "bo", "TA", "li", "se", "NO", "ra"),
    "b10": ("BA", "du", "FE", "mi", "ko", "LU", "de"),
}
MAX_PER_EMOTION = 26 * len(TEXTS)  # text cycles fastest, then the version letter a..z

# Adult male formants F1-F3 (Hz); speakers scale them by their vocal-tract length.
VOWELS: dict[str, tuple[float, float, float]] = {
    "a": (700.0, 1220.0, 2600.0),
    "e": (390.0, 2100.0, 2650.0),
    "i": (280.0, 2250.0, 3000.0),
    "o": (400.0, 800.0, 2550.0),
    "u": (300.0, 750.0, 2350.0),
}
VOWEL_BANDWIDTHS = (60.0, 90.0, 150.0)
# Fixed upper formants: they shape the voice's brightness above F3.
HIGH_FORMANTS, HIGH_BANDWIDTHS = (3400.0, 4500.0), (250.0, 300.0)

PLOSIVE_BANDS = {"p": (400.0, 1500.0), "t": (3000.0, 6500.0), "k": (1500.0, 3500.0)}
VOICED_PLOSIVES = {"b": "p", "d": "t", "g": "k"}
# Consonant levels below are RMS relative to an open vowel's.
FRICATIVE_BANDS = {
    "s": (4000.0, 8500.0, 0.25),
    "sch": (1800.0, 4500.0, 0.22),
    "f": (1000.0, 7500.0, 0.08),
}
SONORANTS = {
    "m": ((250.0, 1000.0, 2200.0), 0.3),
    "n": ((250.0, 1500.0, 2500.0), 0.3),
    "l": ((360.0, 1300.0, 2700.0), 0.5),
    "r": ((450.0, 1300.0, 1800.0), 0.45),
}
# Open vowels are intrinsically louder than close ones.
VOWEL_LEVELS = {"a": 1.0, "e": 0.85, "i": 0.7, "o": 0.9, "u": 0.7}
# Share of the syllable the onset consonant takes.
ONSET_SHARE = {"plosive": 0.30, "fricative": 0.35, "h": 0.22, "sonorant": 0.28, "": 0.04}


@dataclass(frozen=True)
class Speaker:
    code: str  # two-digit EmoDB-style id
    f0: float  # neutral F0 level, Hz
    vtl_scale: float  # formant scaling: shorter vocal tract = higher formants
    tilt: float  # added to the emotion's tilt coefficient
    breath: float  # added to the emotion's aspiration level
    open_quotient: float  # added to the emotion's open quotient
    jitter_scale: float
    gain_db: float  # recording level of the session


@dataclass(frozen=True)
class _Syllable:
    start: int  # sample where the onset consonant starts
    onset_end: int  # sample where the vowel starts
    end: int  # sample where the vowel ends
    consonant: str
    vowel: str
    stressed: bool


def make_speakers(n_speakers: int, seed: int = 0) -> list[Speaker]:
    """Speakers 01..n; odd ids female, even ids male. Speaker k is the same whatever n is."""
    speakers = []
    for index in range(1, n_speakers + 1):
        rng = np.random.default_rng([seed, 1, index])
        female = index % 2 == 1
        f0 = rng.uniform(185.0, 235.0) if female else rng.uniform(95.0, 135.0)
        vtl = rng.uniform(1.12, 1.22) if female else rng.uniform(0.94, 1.04)
        speakers.append(
            Speaker(
                code=f"{index:02d}",
                f0=float(f0),
                vtl_scale=float(vtl),
                tilt=float(rng.uniform(-0.08, 0.08)),
                breath=float(rng.uniform(0.0, 0.08) + (0.04 if female else 0.0)),
                open_quotient=float(rng.uniform(-0.05, 0.05)),
                jitter_scale=float(rng.uniform(0.7, 1.4)),
                gain_db=float(rng.uniform(-2.0, 0.0)),
            )
        )
    return speakers


def utterance_name(speaker: str, emotion_code: str, index: int) -> str:
    """EmoDB file stem of utterance `index` (0-based) of one speaker and emotion."""
    codes = list(TEXTS)
    return (
        f"{speaker}{codes[index % len(codes)]}{emotion_code}{chr(ord('a') + index // len(codes))}"
    )


def _split_syllable(token: str) -> tuple[str, str, bool]:
    lower = token.lower()
    vowel_at = next(i for i, ch in enumerate(lower) if ch in VOWELS)
    return lower[:vowel_at], lower[vowel_at], token.isupper()


def _consonant_kind(consonant: str) -> str:
    if consonant in PLOSIVE_BANDS or consonant in VOICED_PLOSIVES:
        return "plosive"
    if consonant in FRICATIVE_BANDS:
        return "fricative"
    if consonant in SONORANTS:
        return "sonorant"
    if consonant in ("h", ""):
        return consonant
    raise ValueError(f"no synthesis rule for consonant '{consonant}'")


def _plan_syllables(
    rng: np.random.Generator,
    text: tuple[str, ...],
    rate: float,
    pause: float,
    start: float,
    stop: float,
    sr: int,
) -> list[_Syllable]:
    syllables: list[_Syllable] = []
    t = start
    for i in range(10_000):
        token = text[i % len(text)]
        consonant, vowel, stressed = _split_syllable(token)
        if i > 0 and i % len(text) == 0:
            t += pause * float(np.exp(rng.normal(0.0, 0.2)))
        length = float(np.exp(rng.normal(0.0, 0.12))) * (1.25 if stressed else 0.9) / rate
        if t + length > stop:
            if syllables:
                break
            length = stop - t  # clip too short for one whole syllable: squeeze it in
        onset = length * ONSET_SHARE[_consonant_kind(consonant)]
        gap = 0.06 * length
        syllables.append(
            _Syllable(
                start=int(t * sr),
                onset_end=int((t + onset) * sr),
                end=int((t + length - gap) * sr),
                consonant=consonant,
                vowel=vowel,
                stressed=stressed,
            )
        )
        t += length
    return syllables


def _f0_contour(
    rng: np.random.Generator,
    syllables: list[_Syllable],
    n: int,
    sr: int,
    base_f0: float,
    pitch_st: float,
    range_st: float,
    declination_st: float,
) -> np.ndarray:
    # The contour is smooth, so a ~3 ms grid interpolated to samples is plenty and cheap.
    step = max(1, sr // 350)
    grid = np.arange(0, n + step, step, dtype=float)
    first, last = syllables[0].start, syllables[-1].end
    progress = np.clip((grid - first) / max(last - first, 1), 0.0, 1.0)
    semitones = pitch_st + declination_st * (0.5 - progress)
    centers = np.array([(s.onset_end + s.end) / 2.0 for s in syllables])
    widths = np.array([0.35 * (s.end - s.onset_end) + 0.03 * sr for s in syllables])
    stressed = np.array([s.stressed for s in syllables])
    heights = range_st * np.where(
        stressed, rng.uniform(0.6, 1.0, len(syllables)), rng.uniform(0.0, 0.25, len(syllables))
    )
    bumps = np.exp(-0.5 * ((grid[None, :] - centers[:, None]) / widths[:, None]) ** 2)
    # Elementwise, not `heights @ bumps`: a tiny BLAS call can cost more than the whole clip
    # when OpenBLAS threads compete for a few cores.
    semitones = semitones + (heights[:, None] * bumps).sum(axis=0)
    drift_hz = rng.uniform(0.5, 2.0, 2)
    drift_phase = rng.uniform(0.0, 2.0 * np.pi, 2)
    semitones = semitones + 0.3 * np.sin(
        2.0 * np.pi * drift_hz[:, None] * grid[None, :] / sr + drift_phase[:, None]
    ).sum(axis=0)
    f0 = base_f0 * 2.0 ** (semitones / 12.0)
    return np.interp(np.arange(n), grid, np.clip(f0, 50.0, 600.0))


@dataclass(frozen=True)
class _Excitation:
    """One utterance's voice before its vocal tract: what `_synthesize` filters and shapes."""

    syllables: list[_Syllable]
    source: np.ndarray  # the glottal source, unit RMS, one value per output sample
    formant_scale: float
    range_st: float  # accent range in semitones
    loudness: float  # peak level, linear, at most 1


def _excitation(
    rng: np.random.Generator,
    speaker: Speaker,
    profile: EmotionProfile,
    text: tuple[str, ...],
    duration: float,
    sr: int,
) -> _Excitation:
    """One utterance's voice drawn around its emotion's profile and its speaker."""
    # The draw order is part of the corpus: changing it changes every clip.
    n = round(duration * sr)
    pitch_st = profile.pitch_st + rng.normal(0.0, 1.0)
    range_st = profile.range_st * float(np.exp(rng.normal(0.0, 0.25)))
    rate = profile.rate * float(np.exp(rng.normal(0.0, 0.08)))
    loudness_db = 20.0 * np.log10(profile.loudness) + rng.normal(0.0, 1.5) + speaker.gain_db
    loudness = min(10.0 ** (loudness_db / 20.0), 1.0)
    tilt = float(np.clip(profile.tilt + speaker.tilt + rng.normal(0.0, 0.06), 0.0, 0.95))
    jitter = profile.jitter * speaker.jitter_scale * float(np.exp(rng.normal(0.0, 0.3)))
    shimmer = profile.shimmer * float(np.exp(rng.normal(0.0, 0.3)))
    breath = (profile.breath + speaker.breath) * float(np.exp(rng.normal(0.0, 0.3)))
    open_quotient = float(
        np.clip(profile.open_quotient + speaker.open_quotient + rng.normal(0.0, 0.03), 0.35, 0.85)
    )
    formant_scale = speaker.vtl_scale * profile.formant_shift * float(np.exp(rng.normal(0.0, 0.02)))

    lead = rng.uniform(0.04, 0.12) * min(duration, 2.0)
    trail = rng.uniform(0.05, 0.08) * min(duration, 2.0)
    syllables = _plan_syllables(rng, text, rate, profile.pause, lead, duration - trail, sr)
    f0 = _f0_contour(rng, syllables, n, sr, speaker.f0, pitch_st, range_st, profile.declination_st)
    source = glottal_source(
        rng, f0, sr, jitter, shimmer, profile.creak, breath, open_quotient, tilt
    )
    return _Excitation(syllables, source, formant_scale, range_st, loudness)


def _synthesize(rng: np.random.Generator, voice: _Excitation, sr: int) -> np.ndarray:
    """The utterance's waveform: `voice`'s source through its formants, with its consonants."""
    source, formant_scale, loudness = voice.source, voice.formant_scale, voice.loudness
    n = len(source)

    ring = int(0.03 * sr)  # room for the resonators to decay after a segment
    out = np.zeros(n + ring)
    ramp = int(0.012 * sr)
    bandwidths = np.array([*VOWEL_BANDWIDTHS, *HIGH_BANDWIDTHS])
    stress_gain = 1.0 + 0.1 * voice.range_st / 3.0  # livelier speech stresses harder

    def add_voiced(start: int, end: int, formants: tuple[float, ...], gain: float) -> None:
        if end - start < 4:
            return
        sos = resonator_sos(np.array([*formants, *HIGH_FORMANTS]) * formant_scale, bandwidths, sr)
        segment = source[start:end] * fade(end - start, ramp, 2 * ramp)
        filtered = sosfilt(sos, np.concatenate([segment, np.zeros(ring)]))
        # Level set on the output: resonator gain depends on where harmonics fall on formants.
        rms = np.sqrt(np.mean(filtered[: end - start] ** 2)) + 1e-12
        out[start : end + ring] += filtered * (gain / rms)

    def add_noise(start: int, end: int, low: float, high: float, gain: float, decay: float) -> None:
        if end - start < 4:
            return
        noise = sosfilt(bandpass_sos(low, high, sr), rng.normal(0.0, 1.0, end - start))
        envelope = fade(end - start, int(0.003 * sr), int(0.01 * sr))
        if decay > 0:
            envelope *= np.exp(-np.arange(end - start) / (decay * sr))
        out[start:end] += gain * noise / (np.std(noise) + 1e-12) * envelope

    for syllable in voice.syllables:
        formants = VOWELS[syllable.vowel]
        gain = (stress_gain if syllable.stressed else 0.75) * float(np.exp(rng.normal(0.0, 0.1)))
        start, onset_end = syllable.start, syllable.onset_end
        kind = _consonant_kind(syllable.consonant)
        if kind == "plosive":
            place = VOICED_PLOSIVES.get(syllable.consonant, syllable.consonant)
            voiced = syllable.consonant in VOICED_PLOSIVES
            burst = start + int(0.7 * (onset_end - start))
            if voiced:
                add_voiced(start, burst, (200.0, 1000.0, 2500.0), 0.05 * gain)
            low, high = PLOSIVE_BANDS[place]
            add_noise(burst, onset_end, low, high, (0.15 if voiced else 0.3) * gain, 0.008)
        elif kind == "fricative":
            low, high, level = FRICATIVE_BANDS[syllable.consonant]
            add_noise(start, onset_end, low, high, level * gain, 0.0)
        elif kind == "h":
            # /h/ is aspiration shaped by the following vowel's formants.
            sos = resonator_sos(
                np.array([*formants, *HIGH_FORMANTS]) * formant_scale, bandwidths, sr
            )
            noise = sosfilt(sos, rng.normal(0.0, 1.0, onset_end - start))
            envelope = fade(onset_end - start, ramp, ramp)
            out[start:onset_end] += 0.15 * gain * noise / (np.std(noise) + 1e-12) * envelope
        elif kind == "sonorant":
            sonorant_formants, level = SONORANTS[syllable.consonant]
            add_voiced(start, onset_end, sonorant_formants, level * gain)
        add_voiced(onset_end, syllable.end, formants, VOWEL_LEVELS[syllable.vowel] * gain)

    out = out[:n]
    # A faint noise floor, as in any recording; also keeps silence from being digital zero.
    out += rng.normal(0.0, 1.0, n) * 10.0 ** (-60.0 / 20.0) * np.max(np.abs(out))
    peak = 10.0 ** (PEAK_DBFS / 20.0) * loudness
    return out * (peak / (np.max(np.abs(out)) + 1e-12))


@dataclass(frozen=True)
class CorpusSpec:
    """What a synthetic corpus is made from: its cache key covers every field."""

    n_speakers: int = 6
    per_emotion: int = 6
    duration: float = 2.0
    sample_rate: int = 22050
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.n_speakers <= MAX_SPEAKERS:
            raise ValueError(f"n_speakers: expected 1..{MAX_SPEAKERS}, got {self.n_speakers}")
        if not 1 <= self.per_emotion <= MAX_PER_EMOTION:
            raise ValueError(f"per_emotion: expected 1..{MAX_PER_EMOTION}, got {self.per_emotion}")
        if not self.duration >= 0.3:
            raise ValueError(f"duration: expected at least 0.3 seconds, got {self.duration}")
        if self.sample_rate < 8000:
            raise ValueError(f"sample_rate: expected at least 8000 Hz, got {self.sample_rate}")
        if self.seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {self.seed}")

    def record(self) -> dict[str, int | float]:
        """The parameters as written beside the corpus, with the generator's version."""
        return {
            "generator_version": GENERATOR_VERSION,
            **asdict(self),
            "duration": float(self.duration),
        }

    @property
    def key(self) -> str:
        """Short hash naming the cached corpus."""
        return content_key(self.record(), 12)


def generate_synthetic_corpus(
    out_dir: Path,
    n_speakers: int = 6,
    per_emotion: int = 6,
    duration: float = 2.0,
    sample_rate: int = 22050,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Write n_speakers x 7 emotions x per_emotion clips to out_dir/wav; return that folder.

    Clips are 16-bit PCM mono of `duration` seconds (to the nearest sample), with a short
    silence before and after the speech. Each file's audio depends only on the arguments and
    its own name, not on the order of generation.
    """
    CorpusSpec(n_speakers, per_emotion, duration, sample_rate, seed)  # checks the arguments
    wav_dir = Path(out_dir) / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    speakers = make_speakers(n_speakers, seed)
    emotion_codes = list(EMODB_EMOTIONS)
    text_codes = list(TEXTS)
    with tqdm(
        total=n_speakers * len(emotion_codes) * per_emotion,
        disable=not progress,
        desc="synthetic corpus",
        unit="clip",
    ) as bar:
        for speaker_index, speaker in enumerate(speakers, start=1):
            for emotion_index, code in enumerate(emotion_codes):
                for index in range(per_emotion):
                    rng = np.random.default_rng([seed, 2, speaker_index, emotion_index, index])
                    text = TEXTS[text_codes[index % len(text_codes)]]
                    profile = EMOTION_PROFILES[code]
                    voice = _excitation(rng, speaker, profile, text, duration, sample_rate)
                    audio = _synthesize(rng, voice, sample_rate)
                    # Own rounding to int16 so the bytes do not depend on libsndfile's conversion.
                    pcm = np.round(audio * 32767.0).astype(np.int16)
                    name = utterance_name(speaker.code, code, index)
                    sf.write(wav_dir / f"{name}.wav", pcm, sample_rate, subtype="PCM_16")
                    bar.update(1)
    return wav_dir


def ensure_synthetic_corpus(
    cache_dir: Path, spec: CorpusSpec = CorpusSpec(), progress: bool = False
) -> Path:
    """The wav folder of the cached corpus for `spec`, generated on first use.

    Generation goes to a temporary folder that is renamed into place only when complete, so an
    interrupted run never leaves a partial corpus under the final name.
    """
    cache_dir = Path(cache_dir)
    final = cache_dir / f"synthetic-{spec.key}"
    if (final / "wav").is_dir():
        return final / "wav"
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-tmp-", dir=cache_dir))
    try:
        generate_synthetic_corpus(tmp, **asdict(spec), progress=progress)
        (tmp / "synthetic.json").write_text(json.dumps(spec.record(), indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the finished corpus is ordinary data
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same corpus first; its copy is as good as ours.
            if not (final / "wav").is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final / "wav"
