"""Shared fixtures: tiny random models (built once per session, saved as safetensors) and tiny labelled datasets.

Every model here is a few thousand parameters, so the whole pipeline runs on CPU in about a second per run and
nothing touches the network.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import pytest

# The repository, and the shared datasets beside it (`../shared/data`).
REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The label is learnable from one keyword: "great" means good, "awful" means bad; the rest is filler.
KEYWORDS = {"good": "great", "bad": "awful"}
FILLER = ["the", "a", "movie", "film", "plot", "actor", "story", "music", "was", "is", "very", "really", "scene"]
WORDS = [*KEYWORDS.values(), *FILLER]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SPLIT_SIZES = {"train": 40, "validation": 16, "test": 16}


def make_rows(n: int, seed: int) -> list[dict[str, str]]:
    """`n` rows, half of each label, each text 3-8 filler words with the label's keyword somewhere in it."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "good" if i % 2 == 0 else "bad"
        words = rng.choices(FILLER, k=rng.randint(2, 7))
        words.insert(rng.randint(0, len(words)), KEYWORDS[label])
        rows.append({"text": " ".join(words), "label": label})
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows: list[dict], fieldnames: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Datasets


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A folder with train.csv (40 rows), validation.csv (16) and test.csv (16), labels 'good' / 'bad'."""
    folder = tmp_path_factory.mktemp("data")
    for seed, (split, n) in enumerate(SPLIT_SIZES.items()):
        write_csv(folder / f"{split}.csv", make_rows(n, seed=seed))
    return folder


@pytest.fixture(scope="session")
def single_file_rows() -> list[dict[str, str]]:
    return make_rows(60, seed=7)


@pytest.fixture(scope="session")
def data_csv(tmp_path_factory, single_file_rows) -> Path:
    """One CSV file of 60 rows; loratune carves validation and test out of it."""
    return write_csv(tmp_path_factory.mktemp("csv") / "reviews.csv", single_file_rows)


@pytest.fixture(scope="session")
def data_jsonl(tmp_path_factory, single_file_rows) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("jsonl") / "reviews.jsonl", single_file_rows)


@pytest.fixture(scope="session")
def data_parquet(tmp_path_factory, single_file_rows) -> Path:
    return write_parquet(tmp_path_factory.mktemp("parquet") / "reviews.parquet", single_file_rows)


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers


def _save_bert_tokenizer(folder: Path, cls_name: str = "BertTokenizer") -> int:
    import transformers

    vocab = BERT_SPECIALS + WORDS
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # from_pretrained finds vocab.txt under whatever keyword this transformers calls it (5.x renamed vocab_file
    # to vocab and silently ignores the old name, which left every word [UNK])
    tokenizer = getattr(transformers, cls_name).from_pretrained(folder)
    assert tokenizer.convert_tokens_to_ids(WORDS[0]) == len(BERT_SPECIALS), "the tiny vocabulary did not load"
    tokenizer.save_pretrained(folder)
    return len(vocab)


def _train_byte_bpe(folder: Path, special_tokens: list[str]) -> None:
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    corpus = [row["text"] for row in make_rows(200, seed=99)]
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1, special_tokens=special_tokens)
    bpe.save_model(str(folder))  # vocab.json + merges.txt


def _save_gpt2_tokenizer(folder: Path) -> int:
    from transformers import GPT2TokenizerFast

    _train_byte_bpe(folder, ["<|endoftext|>"])
    tokenizer = GPT2TokenizerFast.from_pretrained(folder)  # reads vocab.json + merges.txt
    assert tokenizer.pad_token is None  # like the real GPT-2
    tokenizer.save_pretrained(folder)
    return len(tokenizer)


def _save_roberta_tokenizer(folder: Path) -> int:
    from transformers import RobertaTokenizerFast

    _train_byte_bpe(folder, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = RobertaTokenizerFast.from_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return len(tokenizer)


def _save_wordlevel_tokenizer(folder: Path) -> int:
    """A Llama-style tokenizer: word-level, with BOS/EOS/UNK but no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    assert tokenizer.pad_token is None
    tokenizer.save_pretrained(folder)
    return len(vocab)


# ---------------------------------------------------------------------------------------------------------------
# Models: each built from its *base* class (no classification head), so loratune's head is newly initialised.

SMALL = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}
# With the usual 0.02 init, a tiny random encoder's [CLS] vector hardly depends on the other tokens, and nothing
# short of full fine-tuning can learn from it; larger random weights keep the keyword visible to the head.
# Dropout is off too, so eight examples can be overfitted in a few dozen steps.
WIDE_INIT = 0.2


def _build_bert(folder: Path, with_head: bool = False) -> None:
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    config = BertConfig(
        vocab_size=_save_bert_tokenizer(folder),
        max_position_embeddings=128,
        num_labels=2,
        initializer_range=WIDE_INIT,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **SMALL,
    )
    (BertForSequenceClassification if with_head else BertModel)(config).save_pretrained(folder)


def _build_roberta(folder: Path) -> None:
    from transformers import RobertaConfig, RobertaModel

    vocab_size = _save_roberta_tokenizer(folder)
    # RoBERTa positions start after the pad index, so it needs two more positions than the longest text.
    config = RobertaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=130,
        pad_token_id=1,
        type_vocab_size=1,
        initializer_range=WIDE_INIT,
        **SMALL,
    )
    RobertaModel(config).save_pretrained(folder)


def _build_distilbert(folder: Path) -> None:
    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(
        vocab_size=_save_bert_tokenizer(folder, "DistilBertTokenizer"),
        dim=16,
        n_layers=2,
        n_heads=2,
        hidden_dim=32,
        max_position_embeddings=128,
        initializer_range=WIDE_INIT,
        dropout=0.0,
        attention_dropout=0.0,
        seq_classif_dropout=0.0,
    )
    DistilBertModel(config).save_pretrained(folder)


def _build_gpt2(folder: Path) -> None:
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(vocab_size=_save_gpt2_tokenizer(folder), n_embd=16, n_layer=2, n_head=2, n_positions=128)
    GPT2Model(config).save_pretrained(folder)


def _build_llama(folder: Path) -> None:
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        vocab_size=_save_wordlevel_tokenizer(folder),
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        **SMALL,
    )
    LlamaModel(config).save_pretrained(folder)


def _build_clip(folder: Path) -> None:
    """A model with no sequence-classification class, next to a working tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    _save_bert_tokenizer(folder)
    config = CLIPConfig(
        text_config={**SMALL, "vocab_size": 32, "max_position_embeddings": 32, "bos_token_id": 2, "eos_token_id": 3},
        vision_config={**SMALL, "image_size": 8, "patch_size": 4},
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(folder)


BUILDERS = {
    "bert": _build_bert,
    "roberta": _build_roberta,
    "distilbert": _build_distilbert,
    "gpt2": _build_gpt2,
    "llama": _build_llama,
}


def _seeded_build(tmp_path_factory, name: str, build) -> Path:
    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(f"tiny-{name}")
    build(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """{architecture: model folder} for every tiny model, built lazily and once per session."""
    return _LazyModels(tmp_path_factory)


class _LazyModels(dict):
    def __init__(self, tmp_path_factory) -> None:
        super().__init__()
        self._factory = tmp_path_factory

    def __missing__(self, name: str) -> Path:
        self[name] = _seeded_build(self._factory, name, BUILDERS[name])
        return self[name]


@pytest.fixture(scope="session")
def tiny_bert(tiny_models) -> Path:
    """A tiny BERT saved from BertModel: the classifier is newly initialised when loratune loads it."""
    return tiny_models["bert"]


@pytest.fixture(scope="session")
def tiny_bert_classifier(tmp_path_factory) -> Path:
    """A tiny BERT saved from BertForSequenceClassification (a head already present, for 2 labels)."""
    return _seeded_build(tmp_path_factory, "bert-classifier", lambda f: _build_bert(f, with_head=True))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return _seeded_build(tmp_path_factory, "clip", _build_clip)


# ---------------------------------------------------------------------------------------------------------------
# Configs and runs


def tiny_config(model_dir: Path, data_path: Path, output_dir: Path | None = None, **overrides):
    """A config for a fast, quiet, deterministic run on a tiny model; `train__num_epochs=2` style overrides."""
    from loratune import load_config

    values = {
        "model.name_or_path": str(model_dir),
        "data.path": str(data_path),
        "train.num_epochs": 2,
        "train.batch_size": 8,
        "train.progress": False,
        "train.device": "cpu",
        "train.precision": "fp32",
        "train.learning_rate": 5e-3,
        "train.output_dir": str(output_dir) if output_dir else None,
    }
    values.update({key.replace("__", "."): value for key, value in overrides.items()})
    return load_config(None, {k: v for k, v in values.items() if v is not None})


@pytest.fixture(scope="session")
def bert_run(tmp_path_factory, tiny_bert, data_dir):
    """One finished 2-epoch LoRA run on the tiny BERT, shared by the tests that only read a run folder."""
    from loratune.training.recipe import run

    return run(tiny_config(tiny_bert, data_dir, tmp_path_factory.mktemp("runs") / "bert"))


# ---------------------------------------------------------------------------------------------------------------
# Trained runs shared across modules (export, interop)

# Texts whose probabilities the export and interop tests compare between loratune and plain transformers / PEFT.
PROBE_TEXTS = [
    "great movie",
    "the plot was awful",
    "a film",
    "really great music but an awful actor " * 30,  # longer than max_length: truncated by both
]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """`trained_run(model_dir, data_dir, **overrides)`: a finished one-epoch run folder, trained once per session
    for each (model, data, overrides); overrides are `tiny_config` style (`lora__method="full"`)."""
    import loratune

    runs: dict[tuple, Path] = {}

    def train(model_dir: Path, data_dir: Path, **overrides) -> Path:
        key = (str(model_dir), str(data_dir), tuple(sorted(overrides.items())))
        if key not in runs:
            out = tmp_path_factory.mktemp("trained-runs") / "run"
            # a large step so the adapter and head move far from their initial values and a dropped weight shows
            values = {"train__num_epochs": 1, "train__learning_rate": 3e-2, "data__max_length": 32, **overrides}
            runs[key] = Path(loratune.run(tiny_config(model_dir, data_dir, out, **values)).run_dir)
        return runs[key]

    return train


def pipeline_probabilities(folder: Path, labels: list[str], texts: list[str]):
    """Probabilities (a tensor, columns in `labels` order) from a transformers text-classification pipeline."""
    import torch
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(folder), top_k=None, device="cpu")
    rows = classifier(texts, truncation=True)
    return torch.tensor([[{d["label"]: d["score"] for d in row}[label] for label in labels] for row in rows])


# ---------------------------------------------------------------------------------------------------------------
# Fake run folders built from the schema (RunSummary records), no model involved (report and browser tests)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIX = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
FAKE_CONFIG = "model:\n  name_or_path: sentence-transformers/all-MiniLM-L6-v2\ndata:\n  path: ../shared/data/sst2\n"


def fake_scores(labels: list[str], accuracy: float, f1: float, loss: float | None):
    """`Metrics` on 100 examples per class, with `accuracy` of each confusion-matrix row on its diagonal."""
    from loratune.schema import ClassScores, Metrics

    n = len(labels)
    support = 100
    per_class = {
        label: ClassScores(precision=f1, recall=accuracy, f1=f1 - 0.01 * i, support=support)
        for i, label in enumerate(labels)
    }
    right = round(accuracy * support)
    matrix = [[right if i == j else (support - right) // (n - 1) for j in range(n)] for i in range(n)]
    return Metrics(
        accuracy=accuracy,
        precision=f1 + 0.02,
        recall=accuracy - 0.01,
        f1=f1,
        per_class=per_class,
        confusion_matrix=matrix,
        num_samples=support * n,
        loss=loss,
    )


def fake_summary(
    labels: list[str], epochs: int = 3, method: str = "lora", before_acc: float = 0.5, after_acc: float = 0.86
):
    """A `RunSummary` with every optional value filled in; `epochs=0, method="none"` is an untrained baseline.

    `method="base"` means "none", as in `loratune compare --methods base,...`.
    """
    from loratune.schema import DataSummary, EpochRecord, RunSummary, Throughput
    from loratune.training.compare import METHOD_ALIASES

    method = METHOD_ALIASES.get(method, method)
    history = [
        EpochRecord(
            epoch=e,
            train_loss=0.6 / e,
            train_accuracy=0.7 + 0.05 * e,
            val_loss=0.5 / e,
            val_accuracy=after_acc - 0.04 * (epochs - e),
            val_precision=0.74 + 0.04 * e,
            val_recall=0.73 + 0.04 * e,
            val_f1=0.72 + 0.04 * e,
            learning_rate=4e-4 / e,
            epoch_seconds=10.0 + e,
        )
        for e in range(1, epochs + 1)
    ]
    sizes = {"train": 4000, "validation": 800, "test": 100 * len(labels)}
    return RunSummary(
        method=method,
        labels=list(labels),
        before=fake_scores(labels, before_acc, 0.333, loss=0.69),
        after=fake_scores(labels, after_acc, after_acc - 0.005, loss=0.5 / max(epochs, 1) + 0.02),
        history=history,
        best_epoch=epochs,
        best_metric="val_f1",
        # A local path, which report titles shorten to its last folder.
        model="/home/someone/models/all-MiniLM-L6-v2",
        eval_split="test",
        train_seconds=sum(h.epoch_seconds for h in history),
        total_params=22861442,
        trainable_params=296450 if method != "none" else 0,
        trainable_params_lora=147456,
        peak_memory_mb=1210.5,
        adapter_size_bytes=1234567,
        precision="bf16",
        device="cpu",
        throughput=Throughput(
            train_samples_per_s=900.0, train_tokens_per_s=12000.0, eval_samples_per_s=3000.0, padding_ratio=1.05
        ),
        data=DataSummary(
            source="../shared/data/sst2",
            train_size=sizes["train"],
            validation_size=sizes["validation"],
            test_size=sizes["test"],
            label_counts={s: {label: n // len(labels) for label in labels} for s, n in sizes.items()},
            truncated={"train": 12, "validation": 0, "test": 1},
            max_length=128,
        ),
    )


def save_run_folder(run_dir: Path, summary, config: str | None = FAKE_CONFIG, labels: list[str] | None = None) -> Path:
    """Write a run folder as training leaves it for the report: metrics.json, history.csv, labels.json, config.yaml.

    Args:
        run_dir: Folder to write; created if needed.
        summary: The `RunSummary` that metrics.json holds.
        config: Text of config.yaml, or None to leave it out.
        labels: What labels.json holds; the summary's labels by default, [] to leave the file out.
    """
    from loratune.runs import files

    run_dir.mkdir(parents=True, exist_ok=True)
    files.save_summary(run_dir, summary)
    labels = summary.labels if labels is None else labels
    if labels:
        files.write_json(run_dir / files.LABELS_FILE, labels)
    if config is not None:
        files.write_text(run_dir / files.CONFIG_FILE, config)
    return run_dir


def write_fake_run(
    run_dir: Path, labels: list[str], epochs: int = 3, config: str | None = FAKE_CONFIG, **kwargs
) -> Path:
    """`save_run_folder` of a `fake_summary`; keyword arguments go to `fake_summary`."""
    return save_run_folder(run_dir, fake_summary(labels, epochs, **kwargs), config)


def write_fake_findings(run_dir: Path, labels: list[str], accuracy: float, seed: int = 0, n: int = 120) -> Path:
    """Add what a real run writes beside its summary: the predictions table, the calibration file, data checks,
    and the changes / calibration / significance of metrics.json, all computed from synthetic logits whose
    after-accuracy is about `accuracy`. The test texts and gold labels depend only on `n`, so several fake runs
    pair up example by example, as runs of one task do."""
    import dataclasses

    import numpy as np

    from loratune.runs import files
    from loratune.scoring.changes import Decisions, ScoredSplit
    from loratune.scoring.findings import compute_findings
    from loratune.task import SINGLE

    gold_rng, rng = np.random.default_rng(0), np.random.default_rng(seed)
    y_true = gold_rng.integers(0, len(labels), n)
    texts = [f"test sentence {i} | with *markdown* <b>and html</b>" for i in range(n)]

    def logits(acc: float, size: int, truth: np.ndarray) -> np.ndarray:
        out = rng.normal(0, 1, (size, len(labels)))
        right = rng.random(size) < acc
        out[np.arange(size), np.where(right, truth, (truth + 1) % len(labels))] += 4.0  # over-confident
        return out

    val_true = gold_rng.integers(0, len(labels), n)
    split = ScoredSplit(texts, None, y_true, logits(0.5, n, y_true), logits(accuracy, n, y_true))
    val_logits = logits(accuracy, n, val_true)
    validation = ScoredSplit(texts, None, val_true, val_logits, val_logits)
    found = compute_findings(split, validation, labels, SINGLE, Decisions(), seed=seed)
    summary = files.load_summary(run_dir)
    summary = dataclasses.replace(
        summary, changes=found.changes, calibration=found.calibration, significance=found.significance
    )
    files.save_summary(run_dir, summary)
    files.save_predictions(run_dir, found.table)
    files.save_calibration(run_dir, found.reliability)
    files.save_data_checks(run_dir, FAKE_DATA_CHECKS)
    return run_dir


FAKE_DATA_CHECKS = {
    "splits": {
        split: {
            "rows": rows,
            "duplicate_texts": 2,
            "duplicate_texts_normalised": 3,
            "conflicting_texts": 1,
            "conflicting_texts_normalised": 1,
            "short_texts": 4,
            "dropped_rows": 0,
            "truncated": 1,
        }
        for split, rows in (("train", 4000), ("validation", 800), ("test", 600))
    },
    "shared": {
        pair: {"texts": 1, "texts_normalised": 2, "examples": ["a film | that *both* splits hold"]}
        for pair in ("train/validation", "train/test", "validation/test")
    },
    "conflict_examples": [{"split": "train", "text": "so-so", "labels": ["negative", "positive"]}],
    "label_counts": {"negative": 1900, "positive": 2100},
    "imbalance_ratio": 2100 / 1900,
    "max_length": 128,
    "warnings": ["1 text appears in both train and test (2 once case and spaces are normalised)"],
}


# ---------------------------------------------------------------------------------------------------------------
# Fake multi-label run folders (report, comparison and browser tests)

GO_EMOTIONS = (
    "admiration amusement anger annoyance approval caring confusion curiosity desire disappointment disapproval "
    "disgust embarrassment excitement fear gratitude grief joy love nervousness optimism pride realization relief "
    "remorse sadness surprise neutral"
).split()
FAKE_MULTI_CONFIG = (
    "model:\n  name_or_path: sentence-transformers/all-MiniLM-L6-v2\ndata:\n  path: ../shared/data/go_emotions\n"
    "  task: multi\n"
)


def fake_supports(labels: list[str]) -> dict[str, int]:
    """Distinct positives per label, in no particular order, so sorting by support is visible."""
    return {label: 10 + (i * 37) % 97 for i, label in enumerate(labels)}


def fake_thresholds(labels: list[str]) -> dict[str, float]:
    return {label: round(0.2 + 0.6 * ((i * 7) % 11) / 11, 3) for i, label in enumerate(labels)}


def fake_multilabel_scores(labels: list[str], f1: float, subset_accuracy: float, hamming: float, n: int = 120):
    """Multi-label `Metrics`: per-label scores (support = positives) and every average, no confusion matrix."""
    from loratune.schema import ClassScores, Metrics

    supports = fake_supports(labels)
    per_class = {
        label: ClassScores(precision=f1 + 0.05, recall=f1 - 0.05, f1=f1 - 0.01 * (i % 5), support=supports[label])
        for i, label in enumerate(labels)
    }
    return Metrics(
        accuracy=subset_accuracy,
        precision=f1 + 0.03,
        recall=f1 - 0.03,
        f1=f1,
        per_class=per_class,
        confusion_matrix=[],
        num_samples=n,
        loss=0.3,
        micro_precision=f1 + 0.08,
        micro_recall=f1 + 0.02,
        micro_f1=f1 + 0.05,
        samples_precision=f1 + 0.06,
        samples_recall=f1 + 0.01,
        samples_f1=f1 + 0.04,
        hamming_loss=hamming,
    )


def fake_multilabel_summary(labels: list[str], epochs: int = 3, method: str = "lora", after_f1: float = 0.55, **kw):
    """`fake_summary` turned multi-label: before (f1 0.08) and after scores, task "multi"; `kw` replaces fields."""
    import dataclasses

    return dataclasses.replace(
        fake_summary(labels, epochs, method=method),
        task="multi",
        before=fake_multilabel_scores(labels, 0.08, 0.02, 0.31),
        after=fake_multilabel_scores(labels, after_f1, after_f1 / 2, 0.04),
        **kw,
    )


def write_fake_multilabel_run(
    run_dir: Path, labels: list[str], quality: float = 0.8, seed: int = 0, n: int = 120, **kw
) -> Path:
    """A multi-label run folder with everything a real one has: metrics.json (`fake_multilabel_summary(**kw)`),
    labels.json, config.yaml, thresholds.json, and the predictions table, calibration file and data checks, with
    changes, calibration and significance in metrics.json computed from them.

    The gold label sets depend only on `n`, so several fake runs pair up example by example; `quality` (0 to 1) is
    how closely the "after" probabilities follow the gold sets. The subset accuracies in metrics.json are the ones
    the predictions table gives.
    """
    import dataclasses

    import numpy as np
    import pandas as pd

    from loratune.runs import files
    from loratune.schema import Calibration, Significance
    from loratune.scoring import calibration, significance
    from loratune.scoring.changes import count_changes
    from loratune.task import MULTI

    summary = fake_multilabel_summary(labels, **kw)
    save_run_folder(run_dir, summary, config=FAKE_MULTI_CONFIG)
    thresholds = fake_thresholds(labels)
    files.save_thresholds(run_dir, thresholds)
    cut = np.array([thresholds[label] for label in labels])

    gold_rng, rng = np.random.default_rng(0), np.random.default_rng(seed)
    rates = np.array([fake_supports(labels)[label] / 300 for label in labels])
    gold = gold_rng.random((n, len(labels))) < rates
    gold[: n // 10] = False  # some texts carry no label at all

    def probabilities(q: float) -> np.ndarray:
        # With probability q a (text, label) probability is sure and right, else it is a coin toss.
        informed = np.where(gold, rng.uniform(0.85, 1.0, gold.shape), rng.uniform(0.0, 0.15, gold.shape))
        return np.where(rng.random(gold.shape) < q, informed, rng.random(gold.shape))

    def names(rows: np.ndarray) -> list[str]:
        return ["|".join(label for label, on in zip(labels, row, strict=True) if on) for row in rows]

    before, after = probabilities(0.05), probabilities(quality)
    table = pd.DataFrame(
        {
            "text": [f"fake text number {i}, with *markdown*" for i in range(n)],
            "label": names(gold),
            "pred_before": names(before > cut),
            "prob_before": before.max(axis=1).astype(np.float32),
            "pred_after": names(after > cut),
            "prob_after": after.max(axis=1).astype(np.float32),
            "prob_after_calibrated": after.max(axis=1).astype(np.float32),
            "probs_before": list(before.astype(np.float32)),
            "probs_after": list(after.astype(np.float32)),
        }
    )
    right_before, right_after = table["pred_before"] == table["label"], table["pred_after"] == table["label"]

    # The report draws what these give; tests/test_calibration.py checks them against hand-worked examples.
    def bins(probs: np.ndarray) -> list[dict[str, float]]:
        return calibration.reliability_bins(probs, gold, MULTI)

    def ece(probs: np.ndarray) -> float:
        return calibration.expected_calibration_error(probs, gold, MULTI)

    reliability = {"before": bins(before), "after": bins(after), "after_calibrated": bins(after)}
    _, _, p_value = significance.mcnemar_exact(right_before.to_numpy(), right_after.to_numpy())
    summary = dataclasses.replace(
        summary,
        before=dataclasses.replace(summary.before, accuracy=float(right_before.mean())),
        after=dataclasses.replace(summary.after, accuracy=float(right_after.mean())),
        changes=count_changes(table),
        calibration=Calibration(
            temperature=1.3,
            ece_before=ece(before),
            ece_after=ece(after),
            ece_after_calibrated=ece(after),
        ),
        significance=Significance(
            n_resamples=1000,
            accuracy_before=[0.0, 0.05],
            accuracy_after=[0.3, 0.5],
            f1_before=[0.05, 0.1],
            f1_after=[0.5, 0.6],
            mcnemar_p=p_value,
        ),
    )
    files.save_summary(run_dir, summary)
    files.save_predictions(run_dir, table)
    files.save_calibration(run_dir, {"temperature": 1.3, "fitted_on": "validation", "bins": reliability})
    files.save_data_checks(run_dir, FAKE_DATA_CHECKS)
    return run_dir


# ---------------------------------------------------------------------------------------------------------------
# Servers (tests/serving)


@pytest.fixture
def serve():
    """`serve(*args)`: `loratune serve ARGS` started in a subprocess (`helpers.served.Served`); killed at the end of
    the test if still running."""
    started: list = []

    def start(*args: object, timeout_s: float = 120.0):
        from helpers.served import Served

        served = Served(list(args), timeout_s)
        started.append(served)
        return served

    yield start
    for served in started:
        served.close()


@pytest.fixture(scope="session")
def lora_runs(trained_run, tiny_bert, data_dir) -> list[Path]:
    """Two LoRA runs on the tiny BERT, different seeds (so different adapters and heads)."""
    return [trained_run(tiny_bert, data_dir, train__seed=seed) for seed in (1, 2)]


# Multi-label rows: each label is learnable from its keyword; a text carries any subset, or none (an empty cell).
# Words from the tiny models' vocabulary (WORDS): any other word is one unknown token.
TAGS = {"action": "music", "comedy": "actor", "romance": "story"}
FILLER = ["the", "a", "movie", "film", "plot", "was", "is", "very", "really", "scene"]


def tagged_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tags = sorted(t for t in TAGS if rng.random() < 0.4)
        words = rng.choices(FILLER, k=rng.randint(2, 6)) + [TAGS[t] for t in tags]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "labels": "|".join(tags)})
    return rows


@pytest.fixture(scope="session")
def multi_label_run(tmp_path_factory, tiny_bert) -> Path:
    """A multi-label LoRA run: each of three labels has its keyword; a text carries any subset of them."""
    import loratune

    folder = tmp_path_factory.mktemp("tagged")
    for split, n, seed in (("train", 96, 0), ("validation", 32, 1), ("test", 32, 2)):
        write_csv(folder / f"{split}.csv", tagged_rows(n, seed))
    out = tmp_path_factory.mktemp("multi") / "run"
    cfg = tiny_config(tiny_bert, folder, out, train__num_epochs=8, train__learning_rate=2e-2, data__max_length=16)
    return Path(loratune.run(cfg).run_dir)
