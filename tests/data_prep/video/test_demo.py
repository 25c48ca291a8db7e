"""The demo's motion classes: each pair is the other played backwards, so no single frame tells
a clip's class; in the texture scene the whole picture moves."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.video.demo import CLASSES, VideoDemoConfig, render_clip

PAIRS = [(CLASSES[i], CLASSES[i + 1]) for i in range(0, len(CLASSES), 2)]


@pytest.mark.parametrize("scene", ["object", "texture"])
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p[0])
def test_each_class_is_its_partner_played_backwards(scene, pair):
    forward = render_clip(pair[0], 64, 48, 9, np.random.default_rng(3), scene).astype(int)
    backward = render_clip(pair[1], 64, 48, 9, np.random.default_rng(3), scene).astype(int)
    # the same scene and draws; only the sensor noise (+-4 a frame) differs
    assert np.abs(forward - backward[::-1]).mean() < 4
    assert _moved(forward[0], forward[-1]).mean() > 0.02  # and it does move


def test_in_the_texture_scene_every_part_of_the_frame_moves():
    clip = render_clip("moving right", 64, 48, 9, np.random.default_rng(4), "texture").astype(int)
    moved = _moved(clip[0], clip[-1])
    quarters = [moved[:24, :32], moved[:24, 32:], moved[24:, :32], moved[24:, 32:]]
    assert min(q.mean() for q in quarters) > 0.2


def _moved(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixels whose colour changed far beyond the sensor noise."""
    return np.abs(a - b).max(axis=-1) > 30


def test_an_unknown_scene_is_refused_by_key():
    problems = dict(VideoDemoConfig(out="x", scene="camera").problems())
    assert "scene" in problems and "object, texture" in problems["scene"]
