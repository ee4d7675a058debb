from datetime import timedelta

import pytest

from sdm_proxy.errors import UsageError
from sdm_proxy.validation import check_name, parse_duration, parse_host_port


@pytest.mark.parametrize("text,expected", [
    ("90s", timedelta(seconds=90)), ("30m", timedelta(minutes=30)), ("2h", timedelta(hours=2)),
    ("1d", timedelta(days=1)), ("1h30m", timedelta(minutes=90)), (" 2H ", timedelta(hours=2)),
])
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "2", "h", "2x", "-1h", "0s", "1h 30m", "400d", "1.5h", "2hh",
                                  "1" * 5000 + "s", "٣h"])
def test_bad_durations_are_usage_errors(text):
    with pytest.raises(UsageError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("name", ["prod-db", "a", "ann@corp", "read.only_1"])
def test_good_names(name):
    assert check_name("x", name) == name


@pytest.mark.parametrize("name", ["", "1abc", "-x", "a b", "x;drop", "a" * 64, "é"])
def test_bad_names(name):
    with pytest.raises(UsageError, match="invalid x name"):
        check_name("x", name)


def test_host_port():
    assert parse_host_port("0.0.0.0:5432") == ("0.0.0.0", 5432)
    assert parse_host_port(":6432") == ("127.0.0.1", 6432)
    assert parse_host_port("[::1]:7000") == ("::1", 7000)
    for bad in ("localhost", "host:", "host:0", "host:70000", "host:abc", "host:²", "host:" + "9" * 5000):
        with pytest.raises(UsageError):
            parse_host_port(bad)
