"""One prediction per request id: the answers this process gave recently, by request id.

A call that repeats a request id inside the window gets the original answer again (same arm,
label, scores, bucket and config version) and is neither run nor logged a second time; a repeat
that cannot be the same request (another client identity, experiment or user; a batch that is
not the same batch) is refused with ALREADY_EXISTS. The map is bounded by entries (rows) and by
age, and it is per process: the workers of ``--workers N`` and other gateways each have their
own, which is why the evaluator counts each request id once anyway (``evaluator.aggregate``).

Entries are tuples, evicted oldest first from a deque; a request id whose entry was dropped
(``discard``, a failed batch) or expired may be used again. Cost, measured here (CPU time, a
loaded 2-core box): 0.7-1.2 µs a call at 100,000 entries, most of it the dict's and deque's
memory traffic. A dict that keeps taking new keys and dropping old ones is rebuilt when its free
slots run out: at 100,000 entries that stalls the event loop 3-8 ms about once per 250,000
calls. 256 dicts sharded by hash rebuilt in microseconds but cost 0.6-1 µs more on every call;
one stall per ~30 s at 8k calls/s does not move a p99, so one dict it is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, Final

from abgate.errors import AbgateError, AlreadyExists

# An entry: (key, answered_at, identity, experiment, user_id, answer). ``key`` is the request
# id of a single answer or the tuple of request ids of a batch (each of them maps to the entry);
# ``answer`` is the serialized PredictResponse or a ``Failed`` (the logged failure of a model)
# of a single answer; of a batch, a one-element list holding its PredictBatchResponse, or None
# while the batch is still running.
Entry = tuple[Any, float, str, str, str, Any]
KEY: Final = 0
AT: Final = 1
IDENTITY: Final = 2
EXPERIMENT: Final = 3
USER: Final = 4
ANSWER: Final = 5


class Failed(AbgateError):
    """The answer to repeat of a call whose model failed (its failure row is the request's
    one log row)."""

    def __init__(self, code: Any, message: str) -> None:
        super().__init__(message)
        self.code = code


class OipAnswer:
    """The answer of an OIP ``ModelInfer`` (``gateway.oip``): what the call asked for
    (``signature``: raw or typed, the outputs, the user or users) and its answer — the
    serialized or built response, a ``Failed``, or None while the call still runs. A native call
    never takes it as its own answer."""

    __slots__ = ("answer", "signature")

    def __init__(self, signature: Any) -> None:
        self.signature = signature
        self.answer: Any = None


class RecentRequests:
    """Request id → the entry of its answer, for ``window`` seconds and at most ``max_entries``
    request ids (0 entries: off, nothing is remembered)."""

    def __init__(self, max_entries: int = 100_000, window: float = 60.0) -> None:
        if max_entries < 0 or window < 0:
            raise ValueError("max_entries and window must not be negative")
        self.max_entries = max_entries
        self.window = window
        self.enabled = max_entries > 0 and window > 0
        self._entries: dict[str, Entry] = {}
        self._order: deque[Entry] = deque()
        self._size = 0  # request ids held by the entries in _order
        self.repeats = 0  # calls answered from here
        self.conflicts = 0  # calls refused with ALREADY_EXISTS
        self.foreign_outcomes = 0  # outcomes refused: a recent prediction of another identity

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, request_id: str, now: float) -> Entry | None:
        """The entry of ``request_id`` if it was answered less than ``window`` ago."""
        entry = self._entries.get(request_id)
        if entry is None or entry[AT] < now - self.window:
            return None
        return entry

    def any_of(self, request_ids: Iterable[str]) -> bool:
        """Whether any of ``request_ids`` has an entry, expired or not (at C speed: a batch
        of new ids costs no Python loop)."""
        return not self._entries.keys().isdisjoint(request_ids)

    def put(self, entry: Entry, n: int = 1) -> None:
        """Remember ``entry`` under its key (``n`` request ids: a batch's rows)."""
        if not self.enabled:
            return
        entries = self._entries
        if n == 1 and type(entry[KEY]) is str:
            entries[entry[KEY]] = entry
        else:
            for rid in entry[KEY]:
                entries[rid] = entry
        order = self._order
        order.append(entry)
        self._size += n
        oldest = entry[AT] - self.window
        # Steady state under load: one entry in, the oldest one out, inline.
        while order and (self._size > self.max_entries or order[0][AT] < oldest):
            gone = order.popleft()
            key = gone[KEY]
            if type(key) is str:
                self._size -= 1
                if entries.get(key) is gone:  # not since replaced by a newer answer
                    del entries[key]
            else:
                self._size -= len(key)
                for rid in key:
                    if entries.get(rid) is gone:
                        del entries[rid]

    def discard(self, entry: Entry) -> None:
        """Forget ``entry`` now (a batch that failed before it was answered)."""
        key = entry[KEY]
        for rid in (key,) if isinstance(key, str) else key:
            if self._entries.get(rid) is entry:
                del self._entries[rid]

    def conflict(self, message: str, field: str) -> AlreadyExists:
        self.conflicts += 1
        return AlreadyExists(message, field=field)
