"""The same command, seed and machine give the same metrics to the last digit; the run records the CPU thread
counts it trained with, the one thing that may legitimately differ between two runs on one machine."""

from __future__ import annotations

import dataclasses

import torch
from conftest import tiny_config

from loratune.schema import to_dict
from loratune.training import threads
from loratune.training.recipe import run


def test_the_same_seed_twice_gives_identical_metrics_and_records_its_threads(tmp_path, tiny_bert, data_dir):
    first, second = (
        run(tiny_config(tiny_bert, data_dir, tmp_path / name, train__num_epochs=2, train__deterministic=True))
        for name in ("a", "b")
    )
    keep = ("before", "after", "history")
    a, b = to_dict(first.summary), to_dict(second.summary)
    for key in keep:
        if key == "history":
            for x, y in zip(a[key], b[key], strict=True):
                assert {k: v for k, v in x.items() if "seconds" not in k} == {
                    k: v for k, v in y.items() if "seconds" not in k
                }
        else:
            assert a[key] == b[key]
    assert first.summary.throughput.threads == [torch.get_num_threads()]


def test_deterministic_keeps_the_thread_count_whatever_the_load(monkeypatch):
    governor = threads.ThreadGovernor("cpu", interval=0.0, fixed=True)
    assert not governor.enabled
    free = threads.ThreadGovernor("cpu", interval=0.0)
    assert free.used == [torch.get_num_threads()]


def test_a_resumed_checkpoint_without_thread_counts_still_loads():
    from loratune.schema import from_dict
    from loratune.training.loop import LoopState

    state = to_dict(LoopState(epoch=1))
    del state["threads"]  # written before the field existed
    assert dataclasses.asdict(from_dict(LoopState, state))["threads"] == []
