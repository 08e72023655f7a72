"""Where the CPU and memory go, read from /proc: CPU seconds per component (the pipeline's
processes by role, the services by command name, everyone else), steal, RSS per process."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from votes_tools.processes import Child, Worker

# Processes of the services, by their command name; a machine running only this benchmark
# has no other (check the load average in the report).
SERVICE_COMMANDS = {"beam.smp": "rabbitmq", "redis-server": "redis", "postgres": "postgresql"}
OTHERS = "others"

CpuTicks = dict[int, tuple[str, int]]  # pid -> (command name, user + system clock ticks)


def read_proc(path: str) -> dict[str, str]:
    """`key: value` lines of a /proc file; {} where there is none."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def cpu_ticks() -> CpuTicks:
    """Command name and CPU clock ticks so far of every process."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        command = text[text.index("(") + 1 : text.rindex(")")]
        rest = text[text.rindex(")") + 2 :].split()
        # Fields 14 and 15 of proc(5), utime and stime; `rest` starts at field 3.
        found[int(stat.parent.name)] = (command, int(rest[11]) + int(rest[12]))
    return found


def cpu_by_component(before: CpuTicks, after: CpuTicks, roles: dict[int, str]) -> dict[str, float]:
    """CPU seconds spent between two `cpu_ticks()`, per component: `roles` names the
    pipeline's own processes, service processes go by command name, and "others" is
    everything else on the machine (what makes a run's figures unreliable). A process
    that ended in between is not counted (the pipeline's and the services' last the run;
    the producers report their own)."""
    tick = os.sysconf("SC_CLK_TCK")
    spent: dict[str, float] = {}
    for pid, (command, ticks) in after.items():
        role = roles.get(pid) or SERVICE_COMMANDS.get(command) or OTHERS
        earlier = before.get(pid)
        used = ticks - (earlier[1] if earlier and earlier[0] == command else 0)
        spent[role] = spent.get(role, 0.0) + used / tick
    return spent


def stolen_ticks() -> int:
    """Clock ticks the hypervisor gave to other machines (`steal` in /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) if len(fields) > 8 else 0


def stolen_seconds(since: int) -> float:
    """CPU seconds stolen since `stolen_ticks()` returned `since`."""
    return (stolen_ticks() - since) / os.sysconf("SC_CLK_TCK")


def idle_cores(seconds: float = 5.0) -> dict[str, float]:
    """Cores each service uses with nothing of ours running: the share of its CPU that
    is not the benchmark's (other connections, timers), taken off its cost per vote."""
    before = cpu_ticks()
    # A fixed sample of the idle machine: there is no condition to wait for.
    time.sleep(seconds)
    return {
        role: used / seconds for role, used in cpu_by_component(before, cpu_ticks(), {}).items()
    }


def net_cpu_ms(
    spent: dict[str, float], idle: dict[str, float], seconds: float, messages: int
) -> dict[str, float]:
    """CPU milliseconds per message, less what each service spends when idle."""
    return {
        role: max(0.0, used - idle.get(role, 0.0) * seconds) * 1000 / messages
        for role, used in spent.items()
    }


def short_name(worker: Worker) -> str:
    return worker.name.split("@")[0].rsplit("-", 1)[0]  # without the pid


def pipeline_roles(workers: Sequence[Worker], beat: Child) -> dict[int, str]:
    """The role of each process of the pipeline, by pid, this one ("bench") included."""
    roles = {beat.pid: "beat", os.getpid(): "bench"}
    for worker in workers:
        # The main process consumes and acknowledges every message; the pool does the work.
        roles[worker.pid] = f"{short_name(worker)} worker main"
        roles |= dict.fromkeys(worker.children(), f"{short_name(worker)} worker pool")
    return roles


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    label: str
    pid: int
    rss_mib: float  # now
    peak_mib: float  # VmHWM: the most it ever held


def process_memory(label: str, pid: int) -> ProcessMemory | None:
    status = read_proc(f"/proc/{pid}/status")
    if "VmRSS" not in status:
        return None

    def mib(key: str) -> float:
        return round(int(status[key].split()[0]) / 1024, 1)

    return ProcessMemory(label, pid, mib("VmRSS"), mib("VmHWM"))


def pipeline_memory(workers: Sequence[Worker], beat: Child) -> list[ProcessMemory]:
    """Each worker's main process and pool processes, and beat."""
    found = []
    for worker in workers:
        short = short_name(worker)
        found.append(process_memory(f"{short} main", worker.pid))
        for n, child in enumerate(sorted(worker.children()), start=1):
            found.append(process_memory(f"{short} pool {n}", child))
    found.append(process_memory("beat", beat.pid))
    return [memory for memory in found if memory is not None]
