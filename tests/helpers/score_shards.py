"""Run under torchrun by tests/scoring/test_sharded_scoring.py: each process scores its share of a loader with
`predict_logits` and rank 0 saves what every process got back, to compare with one process.

    torchrun --nproc_per_node N tests/helpers/score_shards.py OUT.npz SIZES

SIZES: comma-separated batch sizes, e.g. 3,1,2 (uneven batches; fewer batches than processes is allowed).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from accelerate import Accelerator

from loratune.scoring.inference import predict_logits


class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.x = torch.arange(n * 4, dtype=torch.float32).reshape(n, 4) / 10
        self.y = torch.arange(n) % 3

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor):  # noqa: ANN201
        return type("Out", (), {"logits": self.linear(x)})()


def loader(sizes: list[int]) -> torch.utils.data.DataLoader:
    starts = np.cumsum([0, *sizes])
    batches = [list(range(a, b)) for a, b in zip(starts[:-1], starts[1:], strict=True)]
    return torch.utils.data.DataLoader(Rows(int(starts[-1])), batch_sampler=batches)


def main() -> None:
    out, sizes = sys.argv[1], [int(s) for s in sys.argv[2].split(",") if s]
    accelerator = Accelerator(cpu=True)
    logits, labels = predict_logits(Model(), loader(sizes), accelerator)
    if accelerator.is_main_process:
        np.savez(out, logits=logits, labels=labels, processes=accelerator.num_processes)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
