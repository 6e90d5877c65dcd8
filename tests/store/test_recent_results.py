"""The results a store remembers of its own completions stay bounded: by count, by total
size, and by the size of one result."""

from __future__ import annotations

from perdure.records import Value
from perdure.values import RecentResults


def _value(size: int) -> Value:
    return Value(codec="msgpack", data=b"x" * size, raw_size=size)


def test_the_oldest_go_first_past_the_count() -> None:
    recent = RecentResults(keep=3, max_bytes=1 << 20, largest=1 << 10)
    for i in range(5):
        recent.add(f"r{i}", _value(10))
    assert [recent.get(f"r{i}") is not None for i in range(5)] == [False, False, True, True, True]


def test_the_total_size_is_bounded() -> None:
    recent = RecentResults(keep=100, max_bytes=1000, largest=600)
    recent.add("a", _value(500))
    recent.add("b", _value(400))
    recent.add("c", _value(300))  # 1,200 bytes: "a" goes
    assert recent.get("a") is None
    assert recent.get("b") is not None
    assert recent.get("c") is not None
    recent.add("b", _value(100))  # replaced, not counted twice
    recent.add("d", _value(550))  # 950 bytes
    assert all(recent.get(k) is not None for k in "bcd")


def test_a_large_result_is_not_kept() -> None:
    recent = RecentResults(keep=100, max_bytes=1 << 20, largest=100)
    recent.add("big", _value(101))
    recent.add("small", _value(100))
    assert recent.get("big") is None
    assert recent.get("small") is not None
