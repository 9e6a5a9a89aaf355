"""CPU time from /proc: of one process, of its threads by role, of a process tree, of the whole
machine, and of our reaped children (h2load); one sample on each side of a measured run."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(path: Path) -> list[str] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ")".
    return text[text.rindex(")") + 2 :].split()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads); 0 if it is gone."""
    f = _stat_fields(Path(f"/proc/{pid}/stat"))
    return (int(f[11]) + int(f[12])) / CLK_TCK if f else 0.0


def thread_cpu_s(pid: int) -> dict[str, tuple[float, float]]:
    """(user, system) CPU seconds of ``pid``'s threads grouped by role: ``main`` (the asyncio
    event loop), ``python-threads`` (other Python threads: grpc.aio's poller, executors) and the
    others by their OS thread name (gRPC's ``event_engine``, …)."""
    out: dict[str, tuple[float, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        task = Path(f"/proc/{pid}/task/{tid}")
        f = _stat_fields(task / "stat")
        if not f:
            continue
        try:
            comm = (task / "comm").read_text().strip()
        except OSError:
            comm = "?"
        if int(tid) == pid:
            key = "main"
        elif comm.startswith("python"):
            key = "python-threads"
        else:
            key = comm
        user, system = out.get(key, (0.0, 0.0))
        out[key] = (user + int(f[11]) / CLK_TCK, system + int(f[12]) / CLK_TCK)
    return out


def descendants(roots: Iterable[int]) -> set[int]:
    """``roots`` and every process below them (by parent pid), scanned from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(Path(f"/proc/{entry}/stat"))
        if f:
            children.setdefault(int(f[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [r for r in roots if r > 0]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def system_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores, idle and iowait excluded)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuSample:
    server_s: float
    threads_s: dict[str, tuple[float, float]]
    db_s: float
    h2load_s: float
    busy_s: float
    wall_s: float


def cpu_sample(server_pid: int, db_pids: Iterable[int]) -> CpuSample:
    return CpuSample(
        server_s=process_cpu_s(server_pid),
        threads_s=thread_cpu_s(server_pid),
        db_s=sum(process_cpu_s(p) for p in descendants(db_pids)),
        # h2load runs as our child: its CPU shows in RUSAGE_CHILDREN once it is reaped.
        h2load_s=children_cpu_s(),
        busy_s=system_busy_s(),
        wall_s=time.monotonic(),
    )
