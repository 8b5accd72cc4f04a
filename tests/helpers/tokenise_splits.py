"""Run by tests/data/test_token_cache.py in a fresh process: load a dataset's splits as training does, tokenise
them, and print one JSON line: each split's cache file and whether this process ran the tokenizer over it.

    python tests/helpers/tokenise_splits.py DATA_DIR TOKENIZER_DIR
"""

from __future__ import annotations

import json
import sys

from transformers import AutoTokenizer

from loratune.config.sections import DataArgs
from loratune.data.batches import tokenize
from loratune.data.splits import load_splits


class CountingTokenizer:
    """The tokenizer, counting the texts it is given (pickled by value, so datasets' fingerprint sees only the
    wrapped tokenizer's state, as it sees loratune's own)."""

    def __init__(self, tokenizer: object) -> None:
        self.tokenizer = tokenizer

    def __call__(self, *args: object, **kwargs: object) -> object:
        with open(sys.argv[3], "a") as seen:
            seen.write(f"{len(args[0])}\n")
        return self.tokenizer(*args, **kwargs)


def main() -> None:
    data, tokenizer_dir = sys.argv[1], sys.argv[2]
    splits = load_splits(DataArgs(path=data), seed=42)
    tokenizer = CountingTokenizer(AutoTokenizer.from_pretrained(tokenizer_dir))
    files = {}
    for name in ("train", "validation", "test"):
        encoded, _ = tokenize(getattr(splits, name), tokenizer, 64)
        files[name] = [f["filename"] for f in encoded.cache_files]
    print(json.dumps(files))


if __name__ == "__main__":
    main()
