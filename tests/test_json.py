"""The library's compact JSON is json.dumps's, character for character."""

from __future__ import annotations

import json
import math

import pytest

from tenant_notify._json import compact


@pytest.mark.parametrize(
    "value",
    [
        [[{"id": "a" * 32, "context": {"total": {"__decimal__": "12.34"}, "n": 1}}], {}, None],
        {"é": "ü€\u2028\ud800", "list": [1, 2.5, True, False, None], "nested": {"a": {"b": []}}},
        "plain",
        12,
        [math.inf, -math.inf],
        {1: "int key", 2.5: "float key", False: "bool key", None: "null key"},
    ],
)
def test_compact_is_json_dumps_with_compact_separators(value):
    assert compact(value) == json.dumps(value, separators=(",", ":"))


def test_what_json_cannot_encode_is_refused_as_json_refuses_it():
    with pytest.raises(TypeError, match="not JSON serializable"):
        compact({"a": object()})
    with pytest.raises(TypeError):
        compact({(1, 2): "tuple key"})
