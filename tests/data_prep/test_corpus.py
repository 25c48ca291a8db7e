"""Tables the layouts read: a JSON array a row at a time gives what ``json.loads`` gives, and a
table that is not one is a LayoutError naming it."""

import json
import random

import pytest

from data_prep import corpus
from data_prep.corpus import LayoutError, json_array_rows


def _rows(rng: random.Random, n: int) -> list:
    values = [12345, -0.5e3, True, None, 'caf\u00e9 \\" ]', [1, [2, {}]], {"a": "[,]"}]
    return [
        {"id": rng.randrange(10**9), "template": "Pushing [something]", "x": rng.choice(values)}
        if rng.random() < 0.8 else rng.choice(values)
        for _ in range(n)
    ]  # fmt: skip


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 20])
def test_a_json_array_read_a_row_at_a_time_is_the_whole_array(tmp_path, monkeypatch, block):
    """Blocks of 1 and 7 characters cut every value and every number somewhere."""
    monkeypatch.setattr(corpus, "_JSON_BLOCK", block)
    rng = random.Random(block)
    for n, indent in [(0, None), (1, None), (40, None), (40, 2), (3, 0)]:
        rows = _rows(rng, n)
        table = tmp_path / "t.json"
        table.write_text(json.dumps(rows, indent=indent, ensure_ascii=False), encoding="utf-8")
        assert list(json_array_rows(table)) == rows
        table.write_text("\ufeff \n" + json.dumps(rows) + "\n\n", encoding="utf-8")  # a BOM
        assert list(json_array_rows(table)) == rows


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"id": 1}', "not a JSON array"),
        ('[{"id": 1}, {"id": 2', "row 2 is not JSON"),
        ('[{"id": 1} {"id": 2}]', "row 1 is followed by '{'"),
        ('[{"id": 1}] x', "more text after"),
        ('[{"id": 1},]', "row 2 is not JSON"),
        ("", "not a JSON array"),
    ],
)
def test_a_table_that_is_not_a_json_array_names_itself_and_the_row(tmp_path, text, says):
    table = tmp_path / "t.json"
    table.write_text(text)
    with pytest.raises(LayoutError, match=says) as err:
        list(json_array_rows(table))
    assert str(table) in str(err.value)


def test_a_table_that_is_not_utf8_is_a_layout_error(tmp_path):
    table = tmp_path / "t.json"
    table.write_bytes(b'[{"id": "caf\xe9"}]')
    with pytest.raises(LayoutError, match="not UTF-8"):
        list(json_array_rows(table))
