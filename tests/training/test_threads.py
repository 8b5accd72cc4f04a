"""Tests for loratune.training.threads: on a CPU, training uses the cores other processes leave free."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from loratune.training import threads


@pytest.fixture
def machine(monkeypatch):
    """A 4-core machine whose clocks and counters the test moves by hand."""
    state = {"now": 0.0, "busy": 1000.0, "own": 10.0, "threads": 4}
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda _: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(threads, "busy_cpu_seconds", lambda: state["busy"])
    monkeypatch.setattr(threads.time, "monotonic", lambda: state["now"])
    monkeypatch.setattr(threads.time, "process_time", lambda: state["own"])
    monkeypatch.setattr(torch, "get_num_threads", lambda: state["threads"])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: state.update(threads=n))

    def advance(seconds: float, own_cpus: float, other_cpus: float) -> None:
        state["now"] += seconds
        state["own"] += own_cpus * seconds
        state["busy"] += (own_cpus + other_cpus) * seconds

    state["advance"] = advance
    return state


def test_threads_follow_the_cores_other_processes_leave_free(machine):
    governor = threads.ThreadGovernor("cpu", interval=2.0)
    machine["advance"](1.0, own_cpus=4, other_cpus=2)
    governor.tick()
    assert machine["threads"] == 4  # not yet: less than an interval has passed
    machine["advance"](1.5, own_cpus=4, other_cpus=2)
    governor.tick()
    assert machine["threads"] == 2
    machine["advance"](2.0, own_cpus=2, other_cpus=3.8)  # never fewer than one
    governor.tick()
    assert machine["threads"] == 1
    machine["advance"](2.0, own_cpus=1, other_cpus=0.3)  # the others finished: every core again
    governor.tick()
    assert machine["threads"] == 4
    machine["advance"](2.0, own_cpus=4, other_cpus=1)
    governor.tick()
    governor.close()
    assert machine["threads"] == 4  # the count it found


def test_a_gpu_run_or_a_fixed_thread_count_is_left_alone(machine, monkeypatch):
    for governor in (threads.ThreadGovernor("cuda"), _with_env(monkeypatch), _with_count(machine)):
        machine["advance"](5.0, own_cpus=1, other_cpus=3)
        governor.tick()
        assert not governor.enabled


def _with_env(monkeypatch) -> threads.ThreadGovernor:
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    governor = threads.ThreadGovernor("cpu")
    monkeypatch.delenv("OMP_NUM_THREADS")
    return governor


def _with_count(machine) -> threads.ThreadGovernor:
    machine["threads"] = 3  # torch.set_num_threads(3) by the user
    governor = threads.ThreadGovernor("cpu")
    assert machine["threads"] == 3
    return governor


def test_the_machines_busy_time_is_read_from_proc_stat(monkeypatch):
    # user nice system idle iowait irq softirq steal: 1000 ticks, of which idle + iowait are 850
    stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n"
    monkeypatch.setattr(threads, "Path", lambda path: SimpleNamespace(read_text=lambda: stat))
    assert threads.busy_cpu_seconds() == pytest.approx(150 / os.sysconf("SC_CLK_TCK"))


def test_without_proc_stat_the_busy_time_is_unknown(monkeypatch):
    def missing(path):
        raise FileNotFoundError(path)

    monkeypatch.setattr(threads, "Path", lambda path: SimpleNamespace(read_text=lambda: missing(path)))
    assert threads.busy_cpu_seconds() is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="no /proc/stat on this system")
def test_the_real_busy_time_grows():
    first = threads.busy_cpu_seconds()
    sum(i * i for i in range(2_000_000))  # some CPU time of our own
    assert 0 < first <= threads.busy_cpu_seconds()
