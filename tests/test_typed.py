"""typed.cast and friends: strict conversion of YAML and flag values to annotated field types."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aelab.errors import ConfigError
from aelab.typed import cast, dataclass_from_dict, suggest


@pytest.mark.parametrize("value, kind, expected", [
    (None, Optional[int], None),
    (None, int | None, None),
    ("none", Optional[str], None),
    ("null", str | None, None),
    ("", str | None, None),
    ("7", Optional[int], 7),
    ("1e3", int, 1000),
    ("2E2", int, 200),
    (3.0, int, 3),
    ("12", int, 12),
    ("1e-3", float, 0.001),
    (2, float, 2.0),
    ("true", bool, True), ("True", bool, True), ("yes", bool, True), ("1", bool, True),
    ("false", bool, False), ("no", bool, False), ("0", bool, False),
    (False, bool, False),
    ("512,256", tuple[int, ...], (512, 256)),
    ("512, 256,", tuple[int, ...], (512, 256)),
    ("[512, 256]", tuple[int, ...], (512, 256)),   # YAML flow style on the command line
    ("[64]", tuple[int, ...], (64,)),
    ([1, "2"], tuple[int, ...], (1, 2)),
    (8, tuple[int, ...], (8,)),
    (3, str, "3"),
])
def test_cast_accepts(value, kind, expected):
    result = cast(value, kind, "key")
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize("value, kind", [
    (2.5, int),
    ("2.5", int),
    ("2.5e0", int),     # a float in exponent form must not be truncated to 2
    ("1e-3", int),      # ... nor to 0
    (True, int),        # YAML `yes` is not a count
    (True, float),
    ("maybe", bool),
    (1, bool),
    ("fast", float),
    (None, int),
    ([1], str),
    (True, str),
    ("a,b", tuple[int, ...]),
    ("64,,32", tuple[int, ...]),      # a lost size: not silently 64,32
    (",64", tuple[int, ...]),
    ("x", Optional[int]),
])
def test_cast_rejects_with_config_error_naming_the_key(value, kind):
    with pytest.raises(ConfigError, match=r"^train\.thing: cannot read"):
        cast(value, kind, "train.thing")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", float("nan"), float("inf")])
def test_a_float_setting_must_be_finite(value):
    with pytest.raises(ConfigError, match=r"^train\.lr must be a finite number"):
        cast(value, float, "train.lr")
    with pytest.raises(ConfigError, match=r"^train\.lr"):
        cast(value, Optional[float], "train.lr")


def test_an_int_setting_given_an_infinite_number_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^train\.epochs: cannot read"):
        cast("1e400", int, "train.epochs")


@given(st.integers(min_value=-10**6, max_value=10**6))
def test_int_round_trips_through_its_string_and_exponent_forms(n):
    assert cast(str(n), int, "k") == n
    assert cast(f"{n:e}", int, "k") == n     # '%e' keeps 7 significant digits: exact here


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_round_trips_through_its_repr(x):
    assert cast(repr(x), float, "k") == x


@dataclass
class _Inner:
    size: int = 1


@dataclass
class _Outer:
    inner: _Inner
    rate: float = 0.5


def test_dataclass_from_dict_recurses_and_casts():
    built = dataclass_from_dict(_Outer, {"inner": {"size": "4"}, "rate": "1e-2"}, "")
    assert built == _Outer(inner=_Inner(size=4), rate=0.01)


def test_dataclass_from_dict_names_nested_unknown_keys_with_their_path():
    with pytest.raises(ConfigError, match=r"'inner\.szie'.*did you mean 'inner\.size'"):
        dataclass_from_dict(_Outer, {"inner": {"szie": 4}}, "")


def test_dataclass_from_dict_wants_a_mapping():
    with pytest.raises(ConfigError, match="inner must be a mapping"):
        dataclass_from_dict(_Outer, {"inner": [1, 2]}, "")


def test_suggest_offers_the_nearest_and_lists_choices():
    hint = suggest("lattent_dim", ["latent_dim", "beta"], "model.")
    assert "did you mean 'model.latent_dim'" in hint
    assert "beta, latent_dim" in hint
    assert "did you mean" not in suggest("zzz", ["latent_dim", "beta"])
