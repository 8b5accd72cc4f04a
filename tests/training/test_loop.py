"""Tests for training.loop: the loop learns, is reproducible, keeps the best epoch, and stops early."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_rows, tiny_config, write_csv

from loratune.config import Config
from loratune.data.batches import build_eval_loader, tokenize
from loratune.data.splits import load_splits
from loratune.model.build import build_model
from loratune.model.methods import FULL_HEAD_LEARNING_RATE, method_of
from loratune.runs import files, weights
from loratune.runs.folder import RunFolder, load_run
from loratune.scoring.inference import evaluate
from loratune.task import SINGLE
from loratune.training.loop import TrainingJob, build_optimizer, train
from loratune.training.recipe import run

ARCHITECTURES = ["bert", "distilbert", "gpt2", "llama"]


def train_loop(built, train_ds, val_ds, labels, cfg: Config, learning_rate: float):
    """The loop alone, on a fresh Accelerator, at `learning_rate`."""
    from accelerate import Accelerator

    args = dataclasses.replace(cfg.train, learning_rate=learning_rate)
    job = TrainingJob(train_ds, val_ds, labels, SINGLE, built.tokenizer.pad_token_id)
    return train(built.model, job, args, Accelerator(cpu=True))


def prepare(cfg: Config):
    """Model, tokenised train / validation sets and labels, as recipe.run builds them."""
    from accelerate.utils import set_seed

    splits = load_splits(cfg.data, seed=cfg.train.seed)
    set_seed(cfg.train.seed)
    built = build_model(cfg.model, cfg.lora, splits.labels)
    train_ds, _ = tokenize(splits.train, built.tokenizer, cfg.data.max_length)
    val_ds, _ = tokenize(splits.validation, built.tokenizer, cfg.data.max_length)
    return built, train_ds, val_ds, splits.labels


@pytest.fixture(scope="session")
def eight_examples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eight")
    write_csv(folder / "train.csv", make_rows(8, seed=11))
    write_csv(folder / "validation.csv", make_rows(4, seed=12))
    write_csv(folder / "test.csv", make_rows(4, seed=13))
    return folder


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_loss_goes_down_when_overfitting_eight_examples(arch, tiny_models, eight_examples):
    cfg = tiny_config(
        tiny_models[arch], eight_examples, train__num_epochs=30, train__learning_rate=3e-2, lora__lora_dropout=0
    )
    built, train_ds, val_ds, labels = prepare(cfg)
    result = train_loop(built, train_ds, val_ds, labels, cfg, 3e-2)
    losses = [entry.train_loss for entry in result.history]
    assert len(losses) == 30
    assert losses[-1] < 0.9 * losses[0]
    assert losses[-1] <= min(losses[:5])


def test_learning_rate_warms_up_then_decays_to_zero(tiny_bert, eight_examples):
    cfg = tiny_config(tiny_bert, eight_examples, train__num_epochs=4, train__warmup_ratio=0.25)
    built, train_ds, val_ds, labels = prepare(cfg)
    result = train_loop(built, train_ds, val_ds, labels, cfg, 1e-2)
    rates = [entry.learning_rate for entry in result.history]
    assert rates[0] == pytest.approx(1e-2)  # one step per epoch: the first step ends the warmup
    assert rates == sorted(rates, reverse=True)
    assert rates[-1] == pytest.approx(0.0)


def test_the_head_trains_at_its_own_learning_rate(tiny_bert, data_dir):
    cfg = tiny_config(tiny_bert, data_dir, lora__method="full")
    built, *_ = prepare(cfg)
    args = dataclasses.replace(cfg.train, learning_rate=1e-4, head_learning_rate=3e-3)
    optimizer = build_optimizer(built.model, args, built.head_modules)
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    names = dict(built.model.named_parameters())
    assert rate[id(names["classifier.weight"])] == rate[id(names["classifier.bias"])] == 3e-3
    assert rate[id(names["bert.pooler.dense.weight"])] == 3e-3
    assert rate[id(names["bert.encoder.layer.0.attention.self.query.weight"])] == 1e-4
    assert len(rate) == sum(p.numel() > 0 for p in built.model.parameters())  # every weight trains, once
    assert optimizer.param_groups[0]["lr"] == 1e-4  # the body's rate is the one the history records


def test_full_fine_tuning_records_the_heads_default_rate(tiny_bert, data_dir, tmp_path):
    cfg = tiny_config(tiny_bert, data_dir, tmp_path / "full", lora__method="full", train__num_epochs=1)
    result = run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, learning_rate=None)))
    assert result.config.train.learning_rate == method_of("full").learning_rate
    assert result.config.train.head_learning_rate == FULL_HEAD_LEARNING_RATE
    assert files.load_run_config(result.run_dir).train.head_learning_rate == FULL_HEAD_LEARNING_RATE


def test_model_holds_the_best_epochs_weights(tiny_bert, data_dir):
    cfg = tiny_config(tiny_bert, data_dir, train__num_epochs=4, train__best_metric="loss", train__learning_rate=5e-2)
    built, train_ds, val_ds, labels = prepare(cfg)
    pad = built.tokenizer.pad_token_id
    result = train_loop(built, train_ds, val_ds, labels, cfg, 5e-2)
    best = min(result.history, key=lambda entry: entry.val_loss)
    assert result.best_epoch == best.epoch
    val = evaluate(built.model, build_eval_loader(val_ds, 8, pad), labels, SINGLE)
    assert val.loss == pytest.approx(best.val_loss, abs=1e-5)


def test_training_stops_early_without_improvement(tiny_bert, data_dir):
    # A learning rate this small leaves validation F1 unchanged, so patience 1 stops after epoch 2.
    cfg = tiny_config(tiny_bert, data_dir, train__num_epochs=5, train__early_stopping_patience=1)
    built, train_ds, val_ds, labels = prepare(cfg)
    result = train_loop(built, train_ds, val_ds, labels, cfg, 1e-9)
    assert result.stopped_early
    assert [entry.epoch for entry in result.history] == [1, 2]
    assert result.best_epoch == 1


def test_only_trainable_weights_change(tiny_bert, data_dir):
    cfg = tiny_config(tiny_bert, data_dir, train__num_epochs=1)
    built, train_ds, val_ds, labels = prepare(cfg)
    before = {n: p.detach().clone() for n, p in built.model.named_parameters()}
    train_loop(built, train_ds, val_ds, labels, cfg, 1e-2)
    for name, param in built.model.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        if not param.requires_grad:
            assert not changed, name
    assert any(not torch.equal(before[n], p) for n, p in built.model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize(("method", "pooling"), [("lora", "model"), ("full", "mean"), ("lora", "mean")])
def test_saved_model_reloads_to_identical_logits(method, pooling, tiny_bert, data_dir, tmp_path):
    # Mean pooling has no weights: a full model's folder cannot hold it, the run's config must bring it back.
    cfg = tiny_config(tiny_bert, data_dir, tmp_path / "run", train__num_epochs=1, model__pooling=pooling)
    cfg = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, method=method))
    built, train_ds, val_ds, labels = prepare(cfg)
    train_loop(built, train_ds, val_ds, labels, cfg, 1e-2)
    run_dir = tmp_path / "run"
    files.prepare_run_dir(run_dir)
    files.save_start(run_dir, cfg, labels)
    weights.save_model(run_dir, built.model, method_of(method), built.tokenizer)

    reopened = RunFolder.open(run_dir, finished=False, scored=False)  # the weights alone, before any score
    model, tokenizer, loaded_labels = reopened.trained_model(), reopened.tokenizer, reopened.labels
    assert loaded_labels == labels
    batch = tokenizer(["great movie", "the plot was really awful", "a scene"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, built.model.eval()(**batch).logits)


@pytest.mark.parametrize("method", ["head", "full", "dora", "ia3"])
def test_every_method_trains_saves_and_reloads(method, tiny_bert, data_dir, tmp_path):
    result = run(tiny_config(tiny_bert, data_dir, tmp_path / method, lora__method=method, train__num_epochs=1))
    assert (result.run_dir / "COMPLETE").exists()
    reopened = load_run(result.run_dir)
    model, tokenizer, _, cfg = reopened.trained_model(), reopened.tokenizer, reopened.labels, reopened.config
    assert cfg.lora.method == method
    ds, _ = tokenize(load_splits(cfg.data, seed=cfg.train.seed).test, tokenizer, cfg.data.max_length)
    reloaded = evaluate(model, build_eval_loader(ds, 8, tokenizer.pad_token_id), result.summary.labels, SINGLE)
    assert reloaded.loss == pytest.approx(result.after.loss, abs=1e-5)


def test_same_seed_gives_the_same_metrics(tiny_bert, data_dir, tmp_path):
    cfg = tiny_config(tiny_bert, data_dir, tmp_path / "a")
    first = run(cfg)
    second = run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output_dir=str(tmp_path / "b"))))
    for key in ("before", "after", "best_epoch"):
        assert getattr(first.summary, key) == getattr(second.summary, key), key
    for a, b in zip(first.summary.history, second.summary.history, strict=True):
        assert dataclasses.replace(a, epoch_seconds=0) == dataclasses.replace(b, epoch_seconds=0)


def test_progress_in_a_log_is_a_line_per_epoch_without_carriage_returns(tiny_bert, data_dir, tmp_path, capfd):
    # Under pytest stderr is not a terminal, as in CI or nohup: no redrawn bars, one plain line per epoch.
    run(tiny_config(tiny_bert, data_dir, tmp_path / "run", train__num_epochs=2, train__progress=True))
    err = capfd.readouterr().err
    assert "\r" not in err
    epochs = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert "train loss" in epochs[0] and "val loss" in epochs[0]


def test_progress_in_a_log_reports_the_running_loss_every_few_seconds(capsys, monkeypatch):
    from loratune import progress as module

    clock = iter(float(t) for t in range(1000))  # each reading of the clock: one second later
    monkeypatch.setattr(module.time, "perf_counter", lambda: next(clock))
    progress = module.Progress(total=450, desc="epoch 1/3", enabled=True, every_s=5.0)
    shown = []
    for step in range(1, 21):
        if progress.wants_loss(step):
            shown.append(step)
            progress.update(step, 0.6931)
        else:
            progress.update(step)
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    # a line whenever 5 clock seconds have passed since the last, never a longer silence
    assert len(lines) >= 3 and len(shown) >= 3 and shown[0] <= 5
    assert lines[0].startswith(f"epoch 1/3 step {shown[0]}/450: loss 0.6931") and "s left)" in lines[0]  # an ETA


def test_a_short_loop_in_a_log_says_nothing(capsys):
    from loratune.progress import Progress

    progress = Progress(total=450, desc="epoch 1/3", enabled=True)
    for step in range(1, 451):
        assert not progress.wants_loss(step)
        progress.update(step)
    assert capsys.readouterr().err == ""


def test_scoring_many_batches_shows_its_progress_in_a_log_and_says_nothing_for_a_few(capsys, monkeypatch):
    import torch

    from loratune import progress
    from loratune.scoring.inference import PROGRESS_BATCHES, predict_logits

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)

        def forward(self, x):
            return type("Out", (), {"logits": self.linear(x)})()

    def batches(n):
        return [{"x": torch.ones(1, 2)} for _ in range(n)]

    clock = iter(float(t) for t in range(10_000))  # a slow model: each reading of the clock one second later
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    predict_logits(Tiny(), batches(PROGRESS_BATCHES), progress="scoring")
    assert capsys.readouterr().err == ""
    predict_logits(Tiny(), batches(40), progress="scoring")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 5 and lines[0].startswith("scoring step ")
    assert lines[-1].startswith("scoring step 40/40 (") and lines[-1].endswith(" s)")
