"""Process accounting from /proc: the kernel's own view of CPU, memory and UDP drops.

The benchmark charges a server exactly what the kernel charged it (utime +
stime of every thread), so a noisy neighbour on the machine changes how long a
run takes, not the CPU-seconds it measures.
"""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of all threads of ``pid`` (``/proc/<pid>/stat`` fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def core_busy_seconds(core: int) -> float:
    """Non-idle time of one core, everyone's (``/proc/stat``): minus the server's own CPU,
    what the neighbours (and ksoftirqd) took from the core under test."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                user, nice, system, idle, iowait, irq, softirq, steal = map(int, line.split()[1:9])
                return (user + nice + system + irq + softirq + steal) / CLK_TCK
    raise ValueError(f"no cpu{core} in /proc/stat")


def rss_kib(pid: int) -> int:
    """Resident set size (``VmRSS`` in ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, found by scanning the ppid field of every ``/proc/*/stat``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def set_affinity_all_threads(pid: int, cores: set[int]) -> None:
    """sched_setaffinity applies to one thread; move every thread of the process."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:
            pass  # the thread ended meanwhile


def udp_drops(ports: set[int]) -> int:
    """Datagrams the kernel dropped on full receive queues of this namespace's UDP sockets on ``ports``.

    The last column of ``/proc/net/udp``. On the viewers' sockets it means the
    load generator fell behind; on a server's socket, the server did.
    """
    total = 0
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            fields = line.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port in ports:
                total += int(fields[-1])
    return total
