"""Tests for training.schedule and training.movement: a run that cannot train, or did not, never finishes."""

from __future__ import annotations

import pytest
import torch
from conftest import make_rows, tiny_config, write_csv

from loratune.errors import ConfigError, TrainingError
from loratune.runs.files import COMPLETE
from loratune.training.recipe import run
from loratune.training.schedule import build_scheduler, check_schedule, optimizer_steps


def rates(total_steps: int, warmup_ratio: float, processes: int = 1) -> list[float]:
    """The learning rate of each optimizer step the run takes, for a base rate of 1; stepped as Accelerate steps
    a prepared scheduler (once per process on every optimizer step)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, total_steps, warmup_ratio, processes)
    taken = []
    for _ in range(total_steps):
        taken.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        for _ in range(processes):
            scheduler.step()
    return taken


def test_several_processes_follow_the_schedule_of_one():
    assert rates(12, 0.25, processes=2) == rates(12, 0.25) == rates(12, 0.25, processes=3)
    assert rates(12, 0.25, processes=2)[2] < 1.0  # still warming up at the third step


def test_optimizer_steps_count_each_process_share_of_the_batches(tiny_bert, data_dir):
    cfg = tiny_config(tiny_bert, data_dir, train__batch_size=4, train__num_epochs=3)
    assert optimizer_steps(40, cfg.train) == 30
    assert optimizer_steps(40, cfg.train, processes=2) == 15
    assert optimizer_steps(41, cfg.train, processes=2) == 18  # 11 batches: the last process gets 6


@pytest.mark.parametrize("total, ratio", [(1, 0.0), (2, 0.06), (2, 0.5), (3, 0.9), (10, 0.06), (100, 0.3)])
def test_no_step_the_run_takes_has_a_zero_learning_rate(total, ratio):
    taken = rates(total, ratio)
    assert min(taken) > 0
    assert max(taken) == pytest.approx(1.0) or ratio * total >= total - 1  # the peak is reached after warmup


def test_warmup_rises_then_decay_falls():
    taken = rates(20, 0.25)  # 5 warmup steps
    assert taken[:5] == sorted(taken[:5]) and taken[4] < 1.0
    assert taken[5] == pytest.approx(1.0)
    assert taken[5:] == sorted(taken[5:], reverse=True)


def test_one_optimizer_step_under_warmup_is_refused_with_the_numbers(tiny_bert, data_dir, tmp_path):
    # The example: 200 rows, batch size 256, one epoch: a single step, and warmup took it.
    cfg = tiny_config(tiny_bert, data_dir, tmp_path / "r", train__batch_size=256, train__num_epochs=1)
    with pytest.raises(ConfigError, match=r"40 training rows .* make 1 optimizer step\(s\) over 1 epoch\(s\)"):
        run(cfg)
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


def test_gradient_accumulation_that_leaves_one_step_is_refused(tiny_bert, data_dir, tmp_path):
    cfg = tiny_config(tiny_bert, data_dir, tmp_path / "r", train__gradient_accumulation_steps=16, train__num_epochs=1)
    assert optimizer_steps(40, cfg.train) == 1
    with pytest.raises(ConfigError, match=r"x 16 accumulated.*--warmup-ratio 0"):
        run(cfg)


def test_a_schedule_with_room_passes_the_check(tiny_bert, data_dir):
    cfg = tiny_config(tiny_bert, data_dir, train__batch_size=256, train__num_epochs=2)
    check_schedule(40, cfg.train)  # 2 steps, 1 of warmup: the second runs at the full rate


def test_weights_that_did_not_move_fail_the_run_before_it_is_complete(tiny_bert, data_dir, tmp_path):
    cfg = tiny_config(tiny_bert, data_dir, tmp_path / "r", train__learning_rate=1e-30, train__head_learning_rate=1e-30)
    with pytest.raises(TrainingError, match=r"did not change the adapter or the head weights in 10 optimizer"):
        run(cfg)
    assert not (tmp_path / "r" / COMPLETE).exists()


def test_an_adapter_that_did_not_move_fails_even_when_the_head_trained(tiny_bert, data_dir, tmp_path):
    cfg = tiny_config(tiny_bert, data_dir, tmp_path / "r", train__learning_rate=1e-30, train__head_learning_rate=1e-2)
    with pytest.raises(TrainingError, match=r"did not change the adapter weights.*raise --learning-rate"):
        run(cfg)
    assert not (tmp_path / "r" / COMPLETE).exists()


def test_weights_that_became_nan_fail_the_run(tiny_bert, data_dir, tmp_path, monkeypatch):
    from loratune.training import loop

    real = loop._Loop.finish

    def poisoned(self):
        state = real(self)
        with torch.no_grad():
            next(p for p in self.accelerator.unwrap_model(self.model).parameters() if p.requires_grad).fill_(
                float("nan")
            )
        return state

    monkeypatch.setattr(loop._Loop, "finish", poisoned)
    with pytest.raises(TrainingError, match="non-finite"):
        run(tiny_config(tiny_bert, data_dir, tmp_path / "r"))
    assert not (tmp_path / "r" / COMPLETE).exists()


def test_a_tiny_dataset_with_one_row_per_step_still_trains(tiny_bert, tmp_path):
    folder = tmp_path / "d"
    for split, n in (("train", 4), ("validation", 4), ("test", 4)):
        write_csv(folder / f"{split}.csv", make_rows(n, seed=n + len(split)))
    result = run(tiny_config(tiny_bert, folder, tmp_path / "r", train__batch_size=4, train__num_epochs=2))
    assert (result.run_dir / COMPLETE).exists()
