"""The recent-answer map is bounded by entries (request ids) and by age, oldest out first."""

from __future__ import annotations

from gateway.idempotency import AT, RecentRequests


def single(rid: str, at: float) -> tuple[object, ...]:
    return (rid, at, "", "demo", "u", b"answer-" + rid.encode())


def test_bounded_by_entries_oldest_out_first() -> None:
    r = RecentRequests(max_entries=100, window=60.0)
    for i in range(250):
        r.put(single(f"r{i}", 1000.0))  # type: ignore[arg-type]
    assert len(r) == 100
    assert r.get("r149", 1000.0) is None and r.get("r150", 1000.0) is not None
    # A batch counts one entry per request id and leaves as a whole.
    batch = (tuple(f"b{i}" for i in range(30)), 1000.0, "", "demo", "", [None])
    r.put(batch, 30)
    assert len(r) == 100 and r.get("r179", 1000.0) is None and r.get("b29", 1000.0) is batch
    for i in range(100):
        r.put(single(f"s{i}", 1000.0))  # type: ignore[arg-type]
    assert len(r) == 100 and all(r.get(f"b{i}", 1000.0) is None for i in range(30))
    # A batch larger than the bound is not kept at all (and costs nothing else).
    r.put((tuple(f"c{i}" for i in range(150)), 1000.0, "", "demo", "", [None]), 150)
    assert len(r) == 0


def test_bounded_by_age() -> None:
    r = RecentRequests(max_entries=1000, window=10.0)
    r.put(single("old", 100.0))  # type: ignore[arg-type]
    assert r.get("old", 109.9) is not None
    assert r.get("old", 110.5) is None  # too old to answer, even before it is evicted
    r.put(single("new", 111.0))  # type: ignore[arg-type]
    assert len(r) == 1 and r.get("new", 111.0)[AT] == 111.0  # type: ignore[index]
    # Re-used after expiry: the newer entry is not evicted with the older one's slot.
    r.put(single("new", 125.0))  # type: ignore[arg-type]
    assert len(r) == 1 and r.get("new", 125.0)[AT] == 125.0  # type: ignore[index]


def test_off_and_discard() -> None:
    off = RecentRequests(max_entries=0)
    off.put(single("x", 1.0))  # type: ignore[arg-type]
    assert len(off) == 0 and off.get("x", 1.0) is None
    r = RecentRequests()
    batch = (("a", "b"), 1.0, "", "demo", "", [None])
    r.put(batch, 2)
    r.discard(batch)
    assert len(r) == 0 and not r.any_of(["a", "b"])
