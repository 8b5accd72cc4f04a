"""`loratune` whose rank named by LORATUNE_TEST_FAIL_RANK raises in its first epoch: run under torchrun by
tests/training/test_distributed.py to see what the user gets when one of several processes fails.

    torchrun --nproc_per_node 2 tests/helpers/failing_rank.py train --data ... --output-dir ...
"""

from __future__ import annotations

import os
import sys

from loratune.cli import main
from loratune.training import loop

if os.environ.get("RANK") == os.environ.get("LORATUNE_TEST_FAIL_RANK"):

    def fail(self: object) -> None:
        raise ValueError("injected failure in the first epoch")

    loop._Loop.epoch = fail  # type: ignore[method-assign]

sys.exit(main(sys.argv[1:]))
