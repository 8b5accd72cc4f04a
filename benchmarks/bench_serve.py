"""`loratune serve` under load, beside the server a user would write by hand, on 127.0.0.1.

- Levels: SST-2 validation sentences as single-text `/predict` requests from bounded asyncio clients (httpx, one
  connection each), at concurrency 1, 8, 32 and 128, each for --level-s seconds after a warm-up: requests/s, p50 /
  p95 / p99 latency, errors, the server's RSS. The same levels against the baseline: a FastAPI endpoint calling
  `transformers.pipeline` on the run's merged export (`loratune export`), one request at a time. Both servers run
  side by side and each level is measured on one, then the other, --rounds times; the figures are the medians.
- Eight adapters: eight short runs on one base served by one process, requests spread over them (round robin), at
  concurrency 32, against one of them served alone, alternately as above; peak RSS from /proc (VmHWM).
- Soak: the eight-adapter server at concurrency 64 for --soak-s seconds with 10% bad requests (unknown adapter,
  malformed JSON, too many texts, an unknown field, empty inputs): each must get its 4xx, each good one its answer,
  never a 5xx; RSS sampled every 10 s. Then SIGTERM while the clients keep sending: every request the server had
  accepted must be answered, and the process must exit 0.

Clients and servers share the machine's cores; the baseline and loratune are measured with the same clients.

Usage:
    python benchmarks/bench_serve.py --json benchmarks/results/bench_serve_cpu.json
    python benchmarks/bench_serve.py --level-s 5 --rounds 1 --soak-s 20 --levels 1,32     # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe, machine  # noqa: E402
from bench_train import DATA_DIR, REPO_DIR, _child_env, write_subsample  # noqa: E402

BASELINE_APP = """
import sys, threading
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

classifier = pipeline("text-classification", model=sys.argv[1], top_k=None, device="cpu")
app = FastAPI()
lock = threading.Lock()


class Body(BaseModel):
    inputs: str


@app.post("/predict")
def predict(body: Body):
    with lock:  # one request at a time: the pipeline is not meant to be shared by threads
        return classifier(body.inputs, truncation=True)


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def sentences() -> list[str]:
    with (DATA_DIR / "validation.csv").open(newline="", encoding="utf-8") as handle:
        return [row["sentence"] if "sentence" in row else row["text"] for row in csv.DictReader(handle)]


# -- servers -----------------------------------------------------------------------------------------------------
class Server:
    """A server subprocess: `loratune serve` (its URL read from its "listening on" line) or the baseline app."""

    def __init__(self, argv: list[str], log: Path, url: str | None = None) -> None:
        self.log = log.open("w")
        self.process = subprocess.Popen(
            argv, stderr=subprocess.PIPE if url is None else self.log, stdout=self.log, text=True,
            env=_child_env(), cwd=REPO_DIR,
        )  # fmt: skip
        self.url = url or self._listening()
        if url is None:  # keep draining its stderr into the log
            threading.Thread(target=self._copy, daemon=True).start()
        self._wait_ready()

    def _listening(self) -> str:
        for line in self.process.stderr:
            self.log.write(line)
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                return found.group(1)
        raise RuntimeError(f"the server exited with {self.process.wait()}; see {self.log.name}")

    def _copy(self) -> None:
        for line in self.process.stderr:
            self.log.write(line)
            self.log.flush()

    def _wait_ready(self, timeout_s: float = 300.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.post(self.url + "/predict", json={"inputs": "warm up"}, timeout=30).status_code < 500:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError("the server never answered")

    def rss_mb(self, key: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.log.close()
        return code


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def loratune_server(runs: list[Path], work: Path, name: str, extra: list[str] = ()) -> Server:
    argv = [sys.executable, "-m", "loratune", "serve", *map(str, runs), "--port", "0", *extra]
    return Server(argv, work / f"{name}.log")


def baseline_server(export: Path, work: Path) -> Server:
    script = work / "baseline_app.py"
    script.write_text(BASELINE_APP)
    port = free_port()
    argv = [sys.executable, str(script), str(export), str(port)]
    return Server(argv, work / "baseline.log", url=f"http://127.0.0.1:{port}")


# -- clients -----------------------------------------------------------------------------------------------------
async def load(url: str, bodies, concurrency: int, seconds: float, warmup_s: float = 2.0) -> list[tuple]:
    """`concurrency` clients, each sending the next (body, expected status) as soon as its last answer came, for
    `warmup_s` (not recorded) then `seconds`. Returns one record per request: (sent at, seconds, status or 0,
    the httpx error's name or None, expected status, whether a 200 answer has the right shape)."""
    import httpx

    records: list[tuple] = []
    start = time.perf_counter()
    counting_from, stop_at = start + warmup_s, start + warmup_s + seconds

    async def worker() -> None:
        # A client (one connection) per simulated user: httpx's pool shared by 128 connections cost 15 ms of client
        # CPU per request, and would have measured the client.
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120.0) as client:
            while (sent := time.perf_counter()) < stop_at:
                body, want = next(bodies)
                status, error, shaped = 0, None, False
                try:
                    if isinstance(body, bytes):
                        headers = {"content-type": "application/json"}
                        response = await client.post("/predict", content=body, headers=headers)
                    else:
                        response = await client.post("/predict", json=body)
                    status = response.status_code
                    shaped = status == 200 and isinstance(response.json(), list)
                except httpx.HTTPError as problem:
                    error = type(problem).__name__
                if sent >= counting_from:
                    records.append((sent, time.perf_counter() - sent, status, error, want, shaped))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


def good_bodies(texts: list[str], adapters: list[str] | None = None):
    """Single-text requests over `texts` (spread round robin over `adapters`), each expecting 200."""
    for text, adapter in zip(itertools.cycle(texts), itertools.cycle(adapters or [None])):
        yield ({"inputs": text} if adapter is None else {"inputs": text, "adapter": adapter}), 200


def summarise(records: list[tuple], seconds: float) -> dict:
    """Requests/s, latency percentiles and errors (a wrong status, a failed request, a 200 of the wrong shape)."""
    latencies = sorted(r[1] for r in records)
    errors: dict[str, int] = {}
    for _, _, status, error, want, shaped in records:
        kind = error or (f"status {status}, wanted {want}" if status != want else None)
        kind = kind or (None if want != 200 or shaped else "answer of the wrong shape")
        if kind:
            errors[kind] = errors.get(kind, 0) + 1

    def pct(p: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else float("nan")

    return {
        "requests": len(records), "requests_per_s": len(records) / seconds,
        "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
        "mean_ms": 1000 * statistics.fmean(latencies) if latencies else float("nan"),
        "errors": sum(errors.values()), "error_kinds": errors,
    }  # fmt: skip


def alternate(
    servers: dict[str, Server], levels: list[int], seconds: float, rounds: int, texts: list[str], adapters: dict
) -> dict[str, list[list[dict]]]:
    """Each level on each server in turn, `rounds` times: {server: [[row per level] per round]}. Measured side by
    side, so that a machine that slows down for a while (this one's speed varied by a third between runs) slows
    both alike."""
    out: dict[str, list[list[dict]]] = {name: [] for name in servers}
    for r in range(rounds):
        rows = {name: [] for name in servers}
        for c in levels:
            for name, server in servers.items():
                records = asyncio.run(load(server.url, good_bodies(texts, adapters.get(name)), c, seconds))
                row = {"concurrency": c, **summarise(records, seconds), "rss_mb": server.rss_mb()}
                rows[name].append(row)
                print(_line(f"  round {r + 1} {name:<14} c={c:<4}", row), flush=True)
        for name in servers:
            out[name].append(rows[name])
    return out


def median_row(rows: list[dict]) -> dict:
    """The median of each figure over the rounds; errors summed."""
    keys = ("requests_per_s", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "rss_mb")
    out = {"concurrency": rows[0]["concurrency"], **{k: statistics.median(r[k] for r in rows) for k in keys}}
    out["requests"] = sum(r["requests"] for r in rows)
    out["errors"] = sum(r["errors"] for r in rows)
    return out


def _line(what: str, r: dict) -> str:
    return (
        f"{what} {r['requests_per_s']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  "
        f"p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}  RSS {r.get('rss_mb', float('nan')):.0f} MB"
    )


# -- the soak: bad requests mixed in, then SIGTERM ----------------------------------------------------------------
BAD = [
    ({"inputs": "a text", "adapter": "no-such-adapter"}, 404),
    (b'{"inputs": "a text",', 422),
    ({"inputs": ["a text"] * 33}, 413),
    ({"inputs": "a text", "topk": 3}, 422),
    ({"inputs": []}, 422),
]


def soak_bodies(texts: list[str], adapters: list[str]):
    """Nine good requests (spread over the adapters), then one bad one, in turn; each with the status it must get."""
    good, bad = good_bodies(texts, adapters), itertools.cycle(BAD)
    for i in itertools.count():
        if i % 10 != 9:
            yield next(good)
            continue
        body, status = next(bad)
        if isinstance(body, dict) and "adapter" not in body:
            body = {**body, "adapter": adapters[0]}
        yield body, status


def soak(server: Server, texts: list[str], adapters: list[str], seconds: float, drain_after_s: float = 5.0) -> dict:
    """The soak at concurrency 64, RSS sampled every 10 s; SIGTERM `drain_after_s` before the clients stop.

    Before SIGTERM every request must get its status. A request sent after it may be refused (503, or a refused
    or closed connection); it was never accepted. The server must answer what it had accepted and exit 0."""
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    start = time.perf_counter()
    signalled: list[float] = []

    def watch() -> None:
        while not stop.wait(10.0) and not signalled:
            samples.append((time.perf_counter() - start, server.rss_mb()))
            if time.perf_counter() - start >= seconds:
                signalled.append(time.perf_counter())
                server.process.send_signal(signal.SIGTERM)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    records = asyncio.run(load(server.url, soak_bodies(texts, adapters), 64, seconds + drain_after_s, warmup_s=0))
    stop.set()
    code = server.process.wait(timeout=120)
    cut = signalled[0] if signalled else float("inf")
    before = [r for r in records if r[0] + r[1] < cut]  # answered before the signal
    during = [r for r in records if r[0] < cut <= r[0] + r[1]]  # in flight when it came
    after = [r for r in records if r[0] >= cut]
    result = summarise(before, seconds)
    warm = [rss for t, rss in samples if t >= 60.0] or [rss for _, rss in samples]
    return {
        **result, "exit_code": code, "rss_samples": samples,
        "rss_after_warmup_mb": warm[0] if warm else None, "rss_end_mb": samples[-1][1] if samples else None,
        "bad_requests": sum(r[4] != 200 for r in before),
        "fivexx_before_sigterm": sum(r[2] >= 500 for r in before),
        "in_flight_at_sigterm": len(during),
        "in_flight_answered": sum(r[2] == r[4] and (r[4] != 200 or r[5]) for r in during),
        "in_flight_refused_503": sum(r[2] == 503 for r in during),
        "after_sigterm": summarise(after, max(drain_after_s, 1e-9))["error_kinds"],
    }  # fmt: skip


def agreement(server: Server, runs: list[Path], texts: list[str]) -> dict:
    """The server's probabilities (runs sharing a base, in one process) against `loratune predict`'s at its default
    precision (each run alone, its adapter merged), text by text."""
    import httpx
    import numpy as np

    from loratune.runs.folder import load_run

    worst, differ, total = 0.0, 0, 0
    for run in runs:
        predictor = load_run(run).predictor(device="cpu")
        expected = predictor.predict_proba(texts).numpy()
        got = []
        for start in range(0, len(texts), 32):
            body = {"inputs": texts[start : start + 32], "adapter": run.name}
            answers = httpx.post(server.url + "/predict", json=body, timeout=60).json()
            got += [[{e["label"]: e["score"] for e in row}[label] for label in predictor.labels] for row in answers]
        got = np.array(got)
        worst = max(worst, float(np.abs(got - expected).max()))
        differ += int((got.argmax(1) != expected.argmax(1)).sum())
        total += len(texts)
    return {"max_abs_diff": worst, "labels_differ": differ, "texts": total, "precision": "auto"}


# -- runs ---------------------------------------------------------------------------------------------------------
def train(data: Path, out: Path, seed: int, epochs: int = 1) -> Path:
    if not (out / "COMPLETE").exists():
        argv = [sys.executable, "-m", "loratune", "train", "--data", str(data), "--epochs", str(epochs),
                "--seed", str(seed), "--output-dir", str(out), "--no-progress", "--overwrite"]  # fmt: skip
        subprocess.run(argv, check=True, env=_child_env(), cwd=REPO_DIR, stderr=subprocess.DEVNULL)
    return out


def prepare(runs_dir: Path) -> tuple[Path, list[Path], Path]:
    """The main run (2,000 sentences), eight short ones (400 sentences each, seeds 1-8) and the main run's export;
    kept in `runs_dir` between invocations."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    main_data = runs_dir / "data-2000"
    if not (main_data / "train.csv").exists():
        write_subsample(main_data, 2000)
    small_data = runs_dir / "data-400"
    if not (small_data / "train.csv").exists():
        write_subsample(small_data, 400)
    main = train(main_data, runs_dir / "sst2", seed=42)
    eight = [train(small_data, runs_dir / f"task{i}", seed=i) for i in range(1, 9)]
    export = runs_dir / "sst2-export"
    if not (export / "config.json").exists():
        argv = [sys.executable, "-m", "loratune", "export", str(main), "--output-dir", str(export), "--overwrite"]
        subprocess.run(argv, check=True, env=_child_env(), cwd=REPO_DIR)
    return main, eight, export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,8,32,128", help="client concurrencies")
    parser.add_argument("--level-s", type=float, default=10.0, help="seconds measured per level and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each level, servers alternating")
    parser.add_argument("--soak-s", type=float, default=300.0, help="seconds of soak before SIGTERM (0: no soak)")
    parser.add_argument("--runs-dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-serve-runs")
    parser.add_argument("--skip", default="", help="parts to skip: levels, eight, agreement, soak (comma-separated)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    levels = [int(c) for c in args.levels.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    record: dict = {"machine": machine(), "command": " ".join(sys.argv)}
    print(describe(record["machine"]), flush=True)
    main_run, eight, export = prepare(args.runs_dir)
    texts = sentences()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))

    if "levels" not in skip:
        print(f"baseline (FastAPI + transformers.pipeline on the merged export, one request at a time) and loratune "
              f"serve {main_run.name}, alternately, {args.rounds} rounds", flush=True)  # fmt: skip
        servers = {
            "baseline": baseline_server(export, work),
            "loratune": loratune_server([main_run], work, "loratune"),
        }
        rounds = alternate(servers, levels, args.level_s, args.rounds, texts, {})
        for name, server in servers.items():
            record[name] = [median_row(rows) for rows in zip(*rounds[name], strict=True)]
            record[f"{name}_rounds"] = rounds[name]
            record[f"{name}_peak_rss_mb"] = server.rss_mb("VmHWM")
            server.stop()
        for i, row in enumerate(record["loratune"]):
            row["ratio"] = statistics.median(
                lt[i]["requests_per_s"] / b[i]["requests_per_s"]
                for b, lt in zip(rounds["baseline"], rounds["loratune"], strict=True)
            )
    if "eight" not in skip:
        names = [r.name for r in eight]
        print(f"one short run alone and the eight on one base (requests spread over them), c=32, alternately, "
              f"{args.rounds} rounds", flush=True)  # fmt: skip
        servers = {
            "one_adapter": loratune_server(eight[:1], work, "one"),
            "eight_adapters": loratune_server(eight, work, "eight"),
        }
        rounds = alternate(servers, [32], args.level_s, args.rounds, texts, {"eight_adapters": names})
        for name, server in servers.items():
            record[name] = median_row([r[0] for r in rounds[name]])
            record[name]["peak_rss_mb"] = server.rss_mb("VmHWM")
            server.stop()
        one, many = record["one_adapter"], record["eight_adapters"]
        many["ratio"] = statistics.median(
            m[0]["requests_per_s"] / o[0]["requests_per_s"]
            for o, m in zip(rounds["one_adapter"], rounds["eight_adapters"], strict=True)
        )
        print(f"  peak RSS {many['peak_rss_mb']:.0f} MB vs {one['peak_rss_mb']:.0f} MB "
              f"(x{many['peak_rss_mb'] / one['peak_rss_mb']:.2f}); throughput "
              f"{many['ratio']:.0%} of one adapter's (median of the rounds)", flush=True)  # fmt: skip
    if "agreement" not in skip:
        print("agreement with loratune predict: the eight bf16 adapters sharing a base vs each run alone", flush=True)
        server = loratune_server(eight, work, "agreement")
        record["agreement"] = agreement(server, eight[:2], texts[:200])
        server.stop()
        a = record["agreement"]
        print(f"  max |probability difference| {a['max_abs_diff']:.2e}, labels that differ {a['labels_differ']} of "
              f"{a['texts']}", flush=True)  # fmt: skip
    if args.soak_s > 0 and "soak" not in skip:
        print(f"soak: eight adapters, c=64, 10% bad requests, {args.soak_s:.0f} s, then SIGTERM", flush=True)
        server = loratune_server(eight, work, "soak")
        result = soak(server, texts, [r.name for r in eight], args.soak_s)
        server.log.close()
        record["soak"], record["soak_seconds"] = result, args.soak_s
        print(_line("  soak", result), flush=True)
        print(
            f"  before SIGTERM: {result['requests']:,} requests, {result['bad_requests']:,} of them bad; errors "
            f"{result['error_kinds'] or 'none'}; 5xx {result['fivexx_before_sigterm']}; RSS after warm-up "
            f"{result['rss_after_warmup_mb']:.0f} MB, at the end {result['rss_end_mb']:.0f} MB",
            flush=True,
        )
        print(
            f"  SIGTERM: {result['in_flight_answered']} of {result['in_flight_at_sigterm']} requests in flight "
            f"answered ({result['in_flight_refused_503']} refused with 503 before admission); after it: "
            f"{result['after_sigterm'] or 'nothing refused'}; exit {result['exit_code']}",
            flush=True,
        )
    if "baseline" in record and "loratune" in record:
        print("loratune / baseline (medians of the rounds):", flush=True)
        for b, lt in zip(record["baseline"], record["loratune"], strict=True):
            print(f"  c={b['concurrency']:<4} throughput x{lt['ratio']:.2f}, "
                  f"p50 {lt['p50_ms']:.1f} vs {b['p50_ms']:.1f} ms, p99 {lt['p99_ms']:.1f} vs {b['p99_ms']:.1f} ms",
                  flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
