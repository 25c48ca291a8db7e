"""The local Ray head's token file is its owner's alone."""

from __future__ import annotations

import stat

from data_prep.ray_token import default_token_path, ensure_private_token


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_token_file_is_private(tmp_path):
    path = ensure_private_token(env={}, home=tmp_path)
    assert path == default_token_path(tmp_path)
    assert _mode(path) == 0o600 and len(path.read_text()) == 64


def test_a_readable_token_file_is_narrowed_and_kept(tmp_path):
    path = default_token_path(tmp_path)
    path.parent.mkdir()
    path.write_text("abc")
    path.chmod(0o644)  # what Ray's own writer leaves with the usual umask
    ensure_private_token(env={}, home=tmp_path)
    assert _mode(path) == 0o600 and path.read_text() == "abc"


def test_a_token_named_in_the_environment_is_left_to_ray(tmp_path):
    assert ensure_private_token(env={"RAY_AUTH_TOKEN_PATH": "/elsewhere"}, home=tmp_path) is None
    assert not default_token_path(tmp_path).exists()
