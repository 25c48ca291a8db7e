"""A small speech corpus in the real layouts, spoken by espeak-ng: LibriLight chapters for
pretraining and LibriSpeech-form connected digit strings for the downstream tasks.

Speakers are espeak-ng voices (a language variant, a voice variant, a pitch and a rate). Each
LibriLight speaker reads chapters of real English sentences with pauses between them; the
chapter's ``voice_activity`` comes from the synthesis (each sentence's first to last audible
sample). The labelled set is TIDIGITS-style: ``digit_strings`` distinct strings ("four seven
one") said ``repeats`` times by every speaker (``digits/train``), and once more by the same
speakers and by ``held_out_voices`` never heard in pretraining (``digits/val``), each utterance
with its transcript, upper case as LibriSpeech ships them. With ``selection_split`` every voice
says each string once more (``digits/select``): the split a recipe is chosen on, so that the
numbers reported on ``digits/val`` come from a split no choice looked at (the other splits'
bytes are the same with it and without).

Quirks of real downloads are reproduced: one chapter at espeak's native 22.05 kHz, one in
stereo. With ``corrupt`` the corpus also gets inputs the prep must skip or repair and count: a
truncated FLAC, an empty one, a chapter without its JSON, one with empty voice activity, one
whose voice activity runs past the end, a labelled utterance missing from its transcript file.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from data_prep.audio.decode import RATE
from data_prep.audio.resample import resample

log = logging.getLogger(__name__)

ESPEAK = "espeak-ng"
ESPEAK_RATE = 22050
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# (espeak-ng voice, pitch 0-99, words per minute): one speaker each.
VOICES = (
    ("en-us+m1", 45, 165),
    ("en-gb+f2", 62, 155),
    ("en-us+m3", 35, 150),
    ("en-gb-scotland+f1", 66, 160),
    ("en-029+m2", 50, 170),
    ("en-gb-x-rp+f3", 56, 150),
    ("en-us+m4", 40, 175),
    ("en-gb-x-gbcwmd+f4", 70, 160),
    ("en-us+m6", 30, 155),
    ("en-gb+m7", 48, 165),
    ("en-us+f5", 60, 170),
    ("en-gb-x-gbclan+m5", 42, 158),
)
SENTENCES = (
    "The boat drifted slowly past the old harbour wall.",
    "She kept the letters in a tin box under her bed.",
    "Rain had fallen all night, and the road was soft with mud.",
    "Four men carried the long table into the garden.",
    "A cold wind came down from the hills after sunset.",
    "He read the last page twice before closing the book.",
    "The children ran across the field towards the river.",
    "Seven small birds sat in a row on the fence.",
    "We waited an hour for the train to the coast.",
    "Her father built the house with his own hands.",
    "The lamp on the desk threw a warm light on the papers.",
    "Nobody knew where the old road had once led.",
    "They planted three rows of beans beside the barn.",
    "The doctor arrived early and spoke quietly to the nurse.",
    "A thin layer of snow covered the roofs of the village.",
    "The market was busy with farmers selling apples and bread.",
    "He found a silver coin buried in the sand.",
    "The ship left the port at nine in the morning.",
    "Our teacher asked us to write a story about the sea.",
    "The clock in the hall struck five as we came in.",
    "She painted the door a bright shade of green.",
    "The dog slept by the fire while the storm went on.",
    "Two horses pulled the heavy cart up the hill.",
    "The bridge was closed, so we crossed by the ferry.",
    "A pale moon rose over the quiet lake.",
    "He sharpened his pencil and began to draw the tower.",
    "The soup was hot, and the bread was still warm.",
    "We heard music coming from the house across the street.",
    "The captain checked the map and turned the ship north.",
    "Eight candles burned on the table during the dinner.",
    "The forest path was narrow and covered with leaves.",
    "My uncle told us stories about his years at sea.",
    "The baker opens his shop before the sun comes up.",
    "A small fishing boat came back with a full net.",
    "The garden gate creaked every time the wind blew.",
    "She counted six white sheep on the green slope.",
    "The old man walked to the well with two buckets.",
    "Light from the window fell across the wooden floor.",
    "The students listened while the speaker described the journey.",
    "At the end of the day the workers went home tired.",
)
# Read books say numbers too; these carry digit strings into the pretraining chapters, as
# LibriLight's books carry the words of LibriSpeech's transcripts.
NUMBER_SENTENCES = (
    "The number on the door was {}.",
    "He wrote {} on the back of the card.",
    "Turn to page {} and read the first line.",
    "The train left from platform {} that night.",
    "She remembered the code was {}.",
    "They counted the boxes again and got {}.",
)
CHAPTER_WORDS = ("voyage", "harbour", "garden", "winter", "river", "village", "letters", "journey")


@dataclass
class SpeechDemoConfig:
    """``demo_data`` section for audio: LibriLight chapters + LibriSpeech-form digit strings."""

    out: str = "???"
    speakers: int = 8  # LibriLight readers, who also say the digit strings
    chapters_per_speaker: int = 2
    sentences_per_chapter: int = 12
    held_out_voices: int = 3  # say digit strings in digits/val only
    digit_strings: int = 20  # distinct strings: the classes of utterance classification
    repeats: int = 3  # times each speaker says each string in digits/train
    # digits/select: every voice once more, to choose recipes on (benchmarks.recipe_selection)
    selection_split: bool = False
    corrupt: bool = False  # add broken and quirky inputs the prep must count
    seed: int = 0

    def problems(self):
        if not 2 <= self.speakers <= len(VOICES) - self.held_out_voices:
            yield (
                "speakers",
                f"an int in [2, {len(VOICES)} - held_out_voices], got {self.speakers}",
            )
        for key in ("chapters_per_speaker", "sentences_per_chapter", "repeats"):
            if getattr(self, key) < 1:
                yield (key, f"an int >= 1, got {getattr(self, key)}")
        if not 2 <= self.digit_strings <= 500:
            yield ("digit_strings", f"an int in [2, 500], got {self.digit_strings}")


class EspeakMissing(RuntimeError):
    pass


def require_espeak() -> str:
    path = shutil.which(ESPEAK)
    if path is None:
        raise EspeakMissing(
            "the audio demo corpus is spoken by espeak-ng, which is not installed: "
            "`make install` as root installs it (apt-get install espeak-ng); elsewhere "
            "`sudo apt-get install espeak-ng`, `dnf install espeak-ng` or `brew install espeak-ng`"
        )
    return path


def write_speech_demo(cfg: SpeechDemoConfig) -> Path:
    """Write ``out/librilight/small/...`` and ``out/digits/{train,val[,select]}/...``; returns
    ``out``."""
    require_espeak()
    root = Path(cfg.out)
    rng = np.random.default_rng([cfg.seed, 7])
    speakers = [_speaker_id(i) for i in range(cfg.speakers + cfg.held_out_voices)]
    jobs = _chapter_jobs(cfg, speakers[: cfg.speakers], rng)
    strings = digit_strings(cfg.digit_strings, cfg.seed)
    digit_jobs = _digit_jobs(cfg, speakers, strings, rng)
    with ThreadPoolExecutor(max_workers=4) as pool:
        bar = tqdm(total=len(jobs) + len(digit_jobs), desc="speech demo", unit="file")
        with bar:
            for _ in pool.map(lambda job: (job(), bar.update()), [*jobs, *digit_jobs]):
                pass
    _write_transcripts(root / "digits", digit_jobs)
    if cfg.corrupt:
        _write_broken_inputs(root)
    log.info(
        "speech demo: %d speakers, %d digit strings under %s", cfg.speakers, len(strings), root
    )
    return root


def digit_strings(count: int, seed: int) -> list[str]:
    """``count`` distinct strings of 2-4 digit words, e.g. ``four seven one``."""
    rng = np.random.default_rng([seed, 11])
    found: dict[str, None] = {}
    while len(found) < count:
        n = int(rng.integers(2, 5))
        found[" ".join(DIGITS[int(d)] for d in rng.integers(0, 10, size=n))] = None
    return list(found)


def synthesize(text: str, voice: tuple[str, int, int], rng: np.random.Generator) -> np.ndarray:
    """float32 speech at 22.05 kHz, the voice's pitch and rate jittered a little."""
    name, pitch, wpm = voice
    pitch = int(np.clip(pitch + rng.integers(-6, 7), 0, 99))
    wpm = int(wpm * rng.uniform(0.9, 1.1))
    wav = subprocess.run(
        [ESPEAK, "-v", name, "-p", str(pitch), "-s", str(wpm), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    samples, _ = sf.read(io.BytesIO(wav), dtype="float32")
    return samples


def audible_span(samples: np.ndarray, threshold: float = 0.01) -> tuple[int, int]:
    """First and one past the last sample louder than ``threshold``."""
    loud = np.flatnonzero(np.abs(samples) > threshold)
    return (int(loud[0]), int(loud[-1]) + 1) if len(loud) else (0, 0)


def _sentence(rng) -> str:
    """A book sentence, or (one time in two) a sentence that says a digit string."""
    if rng.random() < 0.5:
        return SENTENCES[int(rng.integers(len(SENTENCES)))]
    digits = " ".join(DIGITS[int(d)] for d in rng.integers(0, 10, size=int(rng.integers(2, 5))))
    return NUMBER_SENTENCES[int(rng.integers(len(NUMBER_SENTENCES)))].format(digits)


def _speaker_id(index: int) -> str:
    return str(100 + 37 * index)  # LibriLight speaker ids are plain numbers


def _chapter_jobs(cfg: SpeechDemoConfig, speakers: list[str], rng) -> list:
    jobs = []
    for s, speaker in enumerate(speakers):
        for c in range(cfg.chapters_per_speaker):
            word = CHAPTER_WORDS[(s + c) % len(CHAPTER_WORDS)]
            book = f"the_{word}_{s}{c}_librivox_64kb_mp3"
            path = (
                Path(cfg.out) / "librilight" / "small" / speaker / book / f"{c + 1:02d}_{word}_64kb"
            )
            picks = [_sentence(rng) for _ in range(cfg.sentences_per_chapter)]
            quirk = "22k" if (s, c) == (1, 0) else "stereo" if (s, c) == (2, 0) else None
            seeds = rng.integers(0, 2**31, size=2)
            jobs.append(_Chapter(path, speaker, book, VOICES[s], picks, seeds, quirk))
    return jobs


@dataclass
class _Chapter:
    path: Path  # without suffix
    speaker: str
    book: str
    voice: tuple[str, int, int]
    sentences: list[str]
    seeds: np.ndarray
    quirk: str | None

    def __call__(self) -> None:
        rng = np.random.default_rng(self.seeds)
        pieces, activity, at = [], [], int(rng.uniform(0.4, 1.0) * ESPEAK_RATE)
        pieces.append(np.zeros(at, np.float32))
        for text in self.sentences:
            speech = synthesize(text, self.voice, rng)
            first, last = audible_span(speech)
            speech = speech[first:last]
            activity.append([at / ESPEAK_RATE, (at + len(speech)) / ESPEAK_RATE])
            pause = np.zeros(int(rng.uniform(0.4, 1.6) * ESPEAK_RATE), np.float32)
            pieces += [speech, pause]
            at += len(speech) + len(pause)
        audio = _with_noise_floor(np.concatenate(pieces), rng)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_flac(self.path.with_suffix(".flac"), audio, self.quirk)
        meta = {
            "speaker": self.speaker,
            "book_meta": {"id": self.book.split("_")[2], "title": self.book.split("_librivox")[0]},
            "snr": round(float(rng.uniform(12, 30)), 2),
            "voice_activity": [[round(a, 3), round(b, 3)] for a, b in activity],
        }
        self.path.with_suffix(".json").write_text(json.dumps(meta, indent=1))


@dataclass
class _Utterance:
    path: Path  # the .flac
    text: str
    voice: tuple[str, int, int]
    seed: int

    def __call__(self) -> None:
        rng = np.random.default_rng(self.seed)
        speech = synthesize(self.text, self.voice, rng)
        first, last = audible_span(speech)
        lead = np.zeros(int(rng.uniform(0.05, 0.25) * ESPEAK_RATE), np.float32)
        audio = _with_noise_floor(np.concatenate([lead, speech[first:last], lead]), rng)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_flac(self.path, audio, None)


def _digit_jobs(cfg: SpeechDemoConfig, speakers: list[str], strings: list[str], rng) -> list:
    """digits/train: the LibriLight speakers, ``repeats`` each; digits/val (and digits/select
    with ``selection_split``, drawn last so the others stay as they were): every voice once."""
    jobs = []
    splits = [("train", "1", speakers[: cfg.speakers], cfg.repeats), ("val", "2", speakers, 1)]
    if cfg.selection_split:
        splits.append(("select", "3", speakers, 1))
    for split, chapter, who, times in splits:
        for speaker in who:
            voice = VOICES[speakers.index(speaker)]
            folder = Path(cfg.out) / "digits" / split / speaker / chapter
            n = 0
            for text in strings:
                for _ in range(times):
                    path = folder / f"{speaker}-{chapter}-{n:04d}.flac"
                    jobs.append(_Utterance(path, text, voice, int(rng.integers(0, 2**31))))
                    n += 1
    return jobs


def _write_transcripts(root: Path, jobs: list[_Utterance]) -> None:
    by_folder: dict[Path, list[str]] = {}
    for job in jobs:
        by_folder.setdefault(job.path.parent, []).append(f"{job.path.stem} {job.text.upper()}")
    for folder, lines in by_folder.items():
        speaker, chapter = folder.parent.name, folder.name
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")


def _with_noise_floor(audio: np.ndarray, rng) -> np.ndarray:
    """A recording's hiss (about -60 dBFS), so silence is not digital zero."""
    return (audio + rng.normal(0, 1e-3, size=len(audio))).astype(np.float32)


def _write_flac(path: Path, audio: np.ndarray, quirk: str | None) -> None:
    """16 kHz mono FLAC as LibriLight ships; ``22k`` keeps espeak's rate, ``stereo`` two channels."""
    if quirk == "22k":
        sf.write(path, audio, ESPEAK_RATE, subtype="PCM_16")
        return
    audio = resample(audio, ESPEAK_RATE, RATE).astype(np.float32)
    if quirk == "stereo":
        audio = np.stack([audio, 0.8 * audio], axis=1)
    sf.write(path, np.clip(audio, -1, 1), RATE, subtype="PCM_16")


def _write_broken_inputs(root: Path) -> None:
    """Inputs a real download or copy produces, each of which the prep must count."""
    small = root / "librilight" / "small"
    chapters = sorted(small.glob("*/*/*.flac"))
    donor = chapters[0].read_bytes()
    folder = chapters[0].parent
    (folder / "90_truncated_64kb.flac").write_bytes(donor[: len(donor) // 3])
    (folder / "90_truncated_64kb.json").write_text(chapters[0].with_suffix(".json").read_text())
    (folder / "91_empty_64kb.flac").write_bytes(b"")
    (folder / "91_empty_64kb.json").write_text('{"voice_activity": []}')
    chapters[1].with_suffix(".json").unlink()  # a FLAC without its JSON: fixed windows
    meta = json.loads(chapters[2].with_suffix(".json").read_text())
    chapters[2].with_suffix(".json").write_text(json.dumps({**meta, "voice_activity": []}))
    meta = json.loads(chapters[3].with_suffix(".json").read_text())
    meta["voice_activity"].append([meta["voice_activity"][-1][1] + 0.2, 9999.0])
    chapters[3].with_suffix(".json").write_text(json.dumps(meta))
    train = sorted((root / "digits" / "train").glob("*/*/*.trans.txt"))[0]
    lines = train.read_text().splitlines()
    train.write_text("\n".join(lines[1:]) + "\n")  # its first utterance loses its transcript
