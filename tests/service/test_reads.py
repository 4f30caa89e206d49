"""app.reads: the JSON decoding of the read pool's connections."""

from __future__ import annotations

import json

import pytest

from app.reads import json_from_utf8

SAMPLES = ['{"a": 1, "b": [1.5, -2e-05, null, true]}', '{"name": "vé ✓ 😀", "escaped": "\\ud83d\\ude00 \\u00e9"}',
           '"\\ud800"', "[]", "3", '{"nested": {"deep": [{"x": "y"}]}}']


@pytest.mark.parametrize("text", SAMPLES)
def test_decodes_like_json_loads(text: str) -> None:
    data = text.encode("utf-8")
    assert json_from_utf8(data) == json.loads(data)
    assert json_from_utf8(text) == json.loads(text)


def test_refuses_what_json_loads_refuses() -> None:
    with pytest.raises(json.JSONDecodeError):
        json_from_utf8(b'{"a": ')
