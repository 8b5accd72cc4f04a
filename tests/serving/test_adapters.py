"""Tests for loratune.serving.adapters and .batcher, in one process: which runs share a base model, how (merged
copies sharing their unchanged weights, or PEFT's one model), and that a batch mixing adapters gives each text the
answer `loratune predict` gives it."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from loratune.errors import ConfigError, RunError
from loratune.runs.folder import load_run
from loratune.serving import adapters as adapters_module
from loratune.serving.adapters import load_groups, name_runs
from loratune.serving.batcher import Batcher
from loratune.serving.metrics import ServerMetrics

TEXTS = ["great movie", "the plot was really awful", "a very great scene with music", "a film " * 40]


def predicted(run_dir, texts):
    """`loratune predict --precision fp32`'s probabilities."""
    return load_run(run_dir).predictor(device="cpu", precision="fp32").predict_proba(texts).numpy()


def test_runs_are_named_by_folder_or_by_name(lora_runs):
    pairs = name_runs([str(lora_runs[0])], [f"second={lora_runs[1]}"])
    assert [name for name, _ in pairs] == [lora_runs[0].name, "second"]


@pytest.mark.parametrize(
    ("runs", "named", "message"),
    [
        ([], [], "Nothing to serve"),
        ([], ["noequals"], "NAME=RUN_FOLDER"),
        ([], ["a b=x"], "not usable in a URL"),
        ([], ["same=x", "same=y"], "Two runs would be served as 'same'"),
    ],
)
def test_bad_names_are_refused_in_one_line(runs, named, message):
    with pytest.raises(ConfigError, match=message):
        name_runs(runs, named)


def test_a_missing_run_folder_is_named(tmp_path):
    with pytest.raises(RunError, match="nowhere"):
        load_groups([("x", tmp_path / "nowhere")], device="cpu")


@pytest.fixture
def peft_shared(monkeypatch):
    """Runs on one base share PEFT's one unmerged model, as when merging would copy too much of it."""
    monkeypatch.setattr(adapters_module, "MERGED_COPIES_BYTES", 0)


def test_lora_runs_on_one_base_share_one_model_and_a_full_run_has_its_own(trained_run, tiny_bert, data_dir, lora_runs):
    full = trained_run(tiny_bert, data_dir, lora__method="full")
    groups = load_groups([("a", lora_runs[0]), ("b", lora_runs[1]), ("f", full)], device="cpu")
    assert sorted(len(g.adapters) for g in groups) == [1, 2]
    shared = next(g for g in groups if len(g.adapters) == 2)
    assert shared.names == ["a", "b"] and shared.merged is not None
    first, second = (dict(m.named_parameters()) for m in shared.merged.values())
    # one copy of every weight the merges left alone; the adapted projections and heads each their own
    same = [n for n in first if first[n] is second[n]]
    own = sorted(n for n in first if first[n] is not second[n])
    assert any("word_embeddings" in n for n in same) and any("intermediate" in n for n in same)
    assert own and all(any(k in n for k in ("attention", "classifier", "pooler")) for n in own), own
    assert not any(torch.equal(first[n], second[n]) for n in own)


def test_runs_whose_merges_would_copy_too_much_share_one_peft_model(lora_runs, peft_shared):
    groups = load_groups([("a", lora_runs[0]), ("b", lora_runs[1])], device="cpu")
    (shared,) = groups
    assert shared.merged is None and shared.mixed
    # one copy of the encoder: the second adapter added only its LoRA and head weights
    base_weights = [n for n, _ in shared.model.named_parameters() if "lora_" not in n and "modules_to_save" not in n]
    assert not any(n.endswith("adapter_1.weight") for n in base_weights)


def _score_together(groups, requests):
    """Every (adapter, texts) of `requests` queued before the batcher's worker starts, so they meet in one batch."""
    adapters = {a.name: a for g in groups for a in g.adapters}
    batcher = Batcher(max_batch_tokens=16384, max_batch_requests=64, metrics=ServerMetrics())
    calls = []
    score = batcher._score
    batcher._score = lambda taken: calls.append(len(taken)) or score(taken)
    done = threading.Event()

    async def main():
        tasks = [
            asyncio.ensure_future(batcher.score(adapters[n], adapters[n].encode(t, None, True))) for n, t in requests
        ]
        await asyncio.sleep(0)  # each task has queued its texts
        worker = threading.Thread(target=batcher.run, args=(done.is_set,))
        worker.start()
        try:
            return await asyncio.gather(*tasks)
        finally:
            done.set()
            worker.join()

    return asyncio.run(main()), calls


@pytest.mark.parametrize("shared_as", ["merged", "peft"])
def test_a_batch_mixing_adapters_gives_each_text_the_answer_predict_gives(lora_runs, shared_as, monkeypatch):
    if shared_as == "peft":
        monkeypatch.setattr(adapters_module, "MERGED_COPIES_BYTES", 0)
    groups = load_groups([("a", lora_runs[0]), ("b", lora_runs[1])], device="cpu", precision="fp32")
    assert (groups[0].merged is not None) == (shared_as == "merged")
    adapters = {a.name: a for a in groups[0].adapters}
    requests = [("a", TEXTS[:2]), ("b", TEXTS), ("a", TEXTS[2:])]
    results, calls = _score_together(groups, requests)
    assert calls == [3]  # all three requests in one batch
    for (name, texts), logits in zip(requests, results, strict=True):
        run = lora_runs[0] if name == "a" else lora_runs[1]
        np.testing.assert_allclose(adapters[name].probabilities(logits), predicted(run, texts), atol=1e-4)
    # the two adapters really differ, so mixing them up would show
    assert not np.allclose(predicted(lora_runs[0], TEXTS), predicted(lora_runs[1], TEXTS), atol=1e-3)


def test_merged_runs_in_bf16_give_exactly_the_answers_predict_gives(lora_runs):
    groups = load_groups([("a", lora_runs[0]), ("b", lora_runs[1])], device="cpu", precision="bf16")
    adapters = {a.name: a for a in groups[0].adapters}
    results, _ = _score_together(groups, [("a", TEXTS), ("b", TEXTS)])
    for name, run, logits in zip("ab", lora_runs, results, strict=True):
        expected = load_run(run).predictor(device="cpu", precision="bf16").predict_proba(TEXTS).numpy()
        # the same bf16 model: equal up to the float32 -> float64 of the softmax
        np.testing.assert_allclose(adapters[name].probabilities(logits), expected, rtol=0, atol=1e-6)


def test_adapters_peft_cannot_mix_are_scored_one_sub_batch_each(trained_run, tiny_bert, data_dir, peft_shared):
    runs = [trained_run(tiny_bert, data_dir, lora__method="dora", train__seed=seed) for seed in (1, 2)]
    groups = load_groups([("a", runs[0]), ("b", runs[1])], device="cpu", precision="fp32")
    assert len(groups) == 1 and not groups[0].mixed and groups[0].merged is None
    adapters = {a.name: a for a in groups[0].adapters}
    results, _ = _score_together(groups, [("a", TEXTS), ("b", TEXTS)])
    for name, run, logits in zip("ab", runs, results, strict=True):
        np.testing.assert_allclose(adapters[name].probabilities(logits), predicted(run, TEXTS), atol=1e-4)


def test_runs_with_different_label_counts_share_the_base_and_keep_their_heads(lora_runs, multi_label_run):
    groups = load_groups([("two", lora_runs[0]), ("three", multi_label_run)], device="cpu", precision="fp32")
    assert len(groups) == 1 and [len(a.labels) for a in groups[0].adapters] == [2, 3]
    adapters = {a.name: a for a in groups[0].adapters}
    results, calls = _score_together(groups, [("two", TEXTS), ("three", TEXTS)])
    assert calls == [1, 1]  # one batch per number of labels
    np.testing.assert_allclose(adapters["two"].probabilities(results[0]), predicted(lora_runs[0], TEXTS), atol=1e-4)
    np.testing.assert_allclose(
        adapters["three"].probabilities(results[1]), predicted(multi_label_run, TEXTS), atol=1e-4
    )


def test_heads_become_modules_peft_can_split_by_adapter_or_none_when_they_cannot():
    from torch import nn

    from loratune.serving.adapters import _mixable_heads

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.pooler = nn.Sequential()
            self.pooler.dense = nn.Linear(4, 4)
            self.pooler.act = nn.Tanh()
            self.classifier = nn.Linear(4, 2)
            self.norm_head = nn.Sequential()
            self.norm_head.norm = nn.LayerNorm(4)

    model = Model()
    assert _mixable_heads(model, ["classifier", "pooler", "score"]) == ["classifier", "pooler.dense"]
    assert _mixable_heads(model, ["classifier", "norm_head"]) is None


@pytest.mark.parametrize("overhead", [0.0, 64.0, 1e9])
def test_batches_cover_every_text_once_within_the_limits(overhead):
    from loratune.serving.batcher import cheapest_batches

    lengths = [5, 50, 7, 48, 6, 49, 30, 3]
    batches = cheapest_batches(lengths, overhead, max_tokens=200, max_batch=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 200) for b in batches)


def test_a_costly_pass_gives_few_batches_and_a_free_one_no_padding():
    from loratune.data.batches import bucket_length
    from loratune.serving.batcher import cheapest_batches

    lengths = [5, 50, 7, 48, 6, 49]
    assert len(cheapest_batches(lengths, 1e9, max_tokens=10_000, max_batch=64)) == 1
    free = cheapest_batches(lengths, 0.0, max_tokens=10_000, max_batch=64)
    # never pads past the rounding every batch gets: only texts of one rounded length share a batch
    assert all(len({bucket_length(lengths[i]) for i in b}) == 1 for b in free)
    split = cheapest_batches(lengths, 20.0, max_tokens=10_000, max_batch=64)
    assert sorted(sorted(lengths[i] for i in b) for b in split) == [[5, 6, 7], [48, 49, 50]]


@pytest.mark.parametrize(
    ("overhead", "per_adapter"), [(0.0, 0.0), (20.0, 0.0), (20.0, 30.0), (80.0, 80.0), (5.0, 500.0)]
)
def test_the_batches_chosen_cost_least_of_every_split_in_length_order(overhead, per_adapter):
    import itertools

    from loratune.data.batches import bucket_length, longest_first
    from loratune.serving.batcher import cheapest_batches

    lengths = [5, 50, 7, 48, 6, 49, 30]
    adapters = ["a", "b", "c", "a", "b", "c", "a"]

    def cost(batches):
        return sum(
            overhead + per_adapter * (len({adapters[i] for i in b}) - 1) + len(b) * bucket_length(lengths[b[0]])
            for b in batches
        )

    order = longest_first(lengths)
    splits = [
        [order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)), strict=True)]
        for k in range(len(order))
        for cuts in itertools.combinations(range(1, len(order)), k)
    ]
    chosen = cheapest_batches(lengths, overhead, 10_000, 64, adapters, per_adapter)
    assert cost(chosen) == pytest.approx(min(cost(split) for split in splits))


def test_an_onnx_export_is_served_on_onnx_runtime_beside_pytorch_runs(lora_runs, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra (CI installs it)")
    from loratune.export.onnx_export import export_onnx
    from loratune.export.onnx_folder import OnnxExport

    export_onnx(lora_runs[1], tmp_path / "onnx")
    groups = load_groups([("a", lora_runs[0]), ("b", tmp_path / "onnx")], device="cpu")
    assert len(groups) == 2  # an export has a session of its own
    adapters = {a.name: a for g in groups for a in g.adapters}
    assert isinstance(adapters["b"].run, OnnxExport) and adapters["b"].describe()["dtype"] == "fp32"
    results, _ = _score_together(groups, [("a", TEXTS), ("b", TEXTS)])
    np.testing.assert_allclose(adapters["b"].probabilities(results[1]), predicted(lora_runs[1], TEXTS), atol=1e-5)


@pytest.mark.parametrize(
    ("backend", "folder", "message"),
    [("torch", "onnx", "is an ONNX export"), ("onnx", "run", "is not an ONNX export")],
)
def test_a_folder_the_backend_cannot_run_is_refused(lora_runs, tmp_path, backend, folder, message):
    pytest.importorskip("onnxruntime", reason="the onnx extra (CI installs it)")
    from loratune.export.onnx_export import export_onnx

    export_onnx(lora_runs[0], tmp_path / "onnx")
    path = tmp_path / "onnx" if folder == "onnx" else lora_runs[0]
    with pytest.raises(ConfigError, match=message):
        load_groups([("x", path)], device="cpu", backend=backend)
