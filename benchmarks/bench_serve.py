"""`loratune serve` under load, beside the server a user would write by hand, on 127.0.0.1.

- Levels: SST-2 validation sentences as single-text `/predict` requests from bounded asyncio clients (httpx), at
  concurrency 1, 8, 32 and 128, each for --level-s seconds after a warm-up: requests/s, p50 / p95 / p99 latency,
  errors, the server's peak RSS. The same levels against the baseline: a FastAPI endpoint calling
  `transformers.pipeline` on the run's merged export (`loratune export`), one request at a time.
- Eight adapters: eight short runs on one base served by one process, requests spread over them (round robin), at
  concurrency 32, against one of them served alone; each server fresh, peak RSS from /proc (VmHWM).
- Soak: the eight-adapter server at concurrency 64 for --soak-s seconds with 10% bad requests (unknown adapter,
  malformed JSON, too many texts, an unknown field, empty inputs): each must get its 4xx, each good one its answer,
  never a 5xx; RSS sampled every 10 s. Then SIGTERM while the clients keep sending: every request the server had
  accepted must be answered, and the process must exit 0.

Clients and servers share the machine's cores; the baseline and loratune are measured with the same clients.

Usage:
    python benchmarks/bench_serve.py --json benchmarks/results/bench_serve_cpu.json
    python benchmarks/bench_serve.py --level-s 5 --soak-s 20 --levels 1,32     # a quick look
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
async def load(
    url: str, bodies: itertools.cycle, concurrency: int, seconds: float, warmup_s: float = 2.0, check=None
) -> dict:
    """`concurrency` clients sending the next body as soon as their last answer came, for `warmup_s` (not
    counted) then `seconds`; `check(body, response)` returns an error name or None (default: status 200)."""
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    start = time.perf_counter()
    counting_from, stop_at = start + warmup_s, start + warmup_s + seconds
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as client:

        async def worker() -> None:
            while (now := time.perf_counter()) < stop_at:
                body = next(bodies)
                sent = time.perf_counter()
                try:
                    if isinstance(body, bytes):
                        response = await client.post("/predict", content=body,
                                                     headers={"content-type": "application/json"})  # fmt: skip
                    else:
                        response = await client.post("/predict", json=body)
                    problem = check(body, response) if check else (None if response.status_code == 200 else "status")
                    status = response.status_code
                except httpx.HTTPError as error:
                    problem, status = type(error).__name__, 0
                if now >= counting_from:
                    latencies.append(time.perf_counter() - sent)
                    statuses[status] = statuses.get(status, 0) + 1
                    if problem:
                        errors[problem] = errors.get(problem, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarise(latencies, seconds, errors, statuses)


def summarise(latencies: list[float], seconds: float, errors: dict, statuses: dict) -> dict:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")

    return {
        "requests": len(latencies), "requests_per_s": len(latencies) / seconds,
        "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
        "mean_ms": 1000 * statistics.fmean(latencies) if latencies else float("nan"),
        "errors": sum(errors.values()), "error_kinds": errors, "statuses": {str(k): v for k, v in statuses.items()},
    }  # fmt: skip


def measure_levels(server: Server, levels: list[int], seconds: float, texts: list[str], adapters=None) -> list[dict]:
    rows = []
    for c in levels:
        if adapters:
            bodies = itertools.cycle({"inputs": t, "adapter": a} for t, a in zip(texts, itertools.cycle(adapters)))
        else:
            bodies = itertools.cycle({"inputs": t} for t in texts)
        row = {"concurrency": c, **asyncio.run(load(server.url, bodies, c, seconds))}
        row["rss_mb"] = server.rss_mb()
        rows.append(row)
        print(_line(f"  c={c:<4}", row), flush=True)
    return rows


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
    """Nine good requests (spread over the adapters), then one bad, in turn; each with the status it must get."""
    good = ((({"inputs": t, "adapter": a}), 200) for t, a in zip(itertools.cycle(texts), itertools.cycle(adapters)))
    bad = itertools.cycle(BAD)
    for i in itertools.count():
        body, status = next(bad) if i % 10 == 9 else next(good)
        if isinstance(body, dict) and "adapter" not in body and status != 200:
            body = {**body, "adapter": adapters[0]}
        yield body, status


def soak(server: Server, texts: list[str], adapters: list[str], seconds: float, drain_after_s: float = 5.0) -> dict:
    """The soak, with RSS samples, then SIGTERM `drain_after_s` before the clients stop."""

    expected: dict[int, int] = {}
    stream = soak_bodies(texts, adapters)

    class Bodies:
        def __next__(self):
            body, status = next(stream)
            expected[id(body)] = status
            return body

    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    start = time.perf_counter()
    signalled: dict = {}

    def sample() -> None:
        while not stop.wait(10.0):
            if server.process.poll() is None:
                samples.append((time.perf_counter() - start, server.rss_mb()))

    def terminate() -> None:
        if not stop.wait(seconds):
            signalled["at"] = time.perf_counter()
            server.process.send_signal(signal.SIGTERM)

    after = {"answered": 0, "refused_503": 0, "not_connected": 0, "lost": 0}

    def check(body, response) -> str | None:
        want = expected.pop(id(body), 200)
        if "at" in signalled and response.status_code in (200, 503):
            after["answered" if response.status_code == 200 else "refused_503"] += 1
        if response.status_code >= 500 and not ("at" in signalled and response.status_code == 503):
            return f"5xx:{response.status_code}"
        if response.status_code != want:
            return f"want {want} got {response.status_code}"
        if want == 200 and not isinstance(response.json(), list):
            return "bad answer"
        return None

    threads = [threading.Thread(target=f, daemon=True) for f in (sample, terminate)]
    for t in threads:
        t.start()
    result = asyncio.run(load(server.url, Bodies(), 64, seconds + drain_after_s, warmup_s=0.0, check=check))
    stop.set()
    code = server.process.wait(timeout=120)
    kinds = result["error_kinds"]
    # After SIGTERM: a refused connection was never accepted; a dropped one would have been.
    after["not_connected"] = kinds.pop("ConnectError", 0)
    after["lost"] = sum(v for k, v in kinds.items() if k in ("ReadError", "RemoteProtocolError", "ReadTimeout"))
    warm = [rss for t, rss in samples if t >= 60.0] or [rss for _, rss in samples]
    return {
        **result, "errors_before_sigterm": {k: v for k, v in kinds.items()}, "exit_code": code,
        "after_sigterm": after, "rss_samples": samples,
        "rss_after_warmup_mb": warm[0] if warm else None, "rss_end_mb": samples[-1][1] if samples else None,
    }  # fmt: skip


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
    parser.add_argument("--level-s", type=float, default=20.0, help="seconds measured per level")
    parser.add_argument("--soak-s", type=float, default=300.0, help="seconds of soak before SIGTERM (0: no soak)")
    parser.add_argument("--runs-dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-serve-runs")
    parser.add_argument("--skip", default="", help="parts to skip: baseline, levels, eight, soak (comma-separated)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    levels = [int(c) for c in args.levels.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    record: dict = {"machine": machine(), "command": " ".join(sys.argv)}
    print(describe(record["machine"]), flush=True)
    main_run, eight, export = prepare(args.runs_dir)
    texts = sentences()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))

    if "baseline" not in skip:
        print("baseline: FastAPI + transformers.pipeline on the merged export, one request at a time", flush=True)
        server = baseline_server(export, work)
        record["baseline"] = measure_levels(server, levels, args.level_s, texts)
        record["baseline_peak_rss_mb"] = server.rss_mb("VmHWM")
        server.stop()
    if "levels" not in skip:
        print(f"loratune serve {main_run.name}", flush=True)
        server = loratune_server([main_run], work, "loratune")
        record["loratune"] = measure_levels(server, levels, args.level_s, texts)
        record["loratune_peak_rss_mb"] = server.rss_mb("VmHWM")
        record["loratune_exit"] = server.stop()
    if "eight" not in skip:
        names = [r.name for r in eight]
        print("one short run alone, then the eight on one base, requests spread over them (c=32)", flush=True)
        server = loratune_server(eight[:1], work, "one")
        one = measure_levels(server, [32], args.level_s, texts)[0]
        one["peak_rss_mb"] = server.rss_mb("VmHWM")
        server.stop()
        server = loratune_server(eight, work, "eight")
        many = measure_levels(server, [32], args.level_s, texts, adapters=names)[0]
        many["peak_rss_mb"] = server.rss_mb("VmHWM")
        server.stop()
        record["one_adapter"], record["eight_adapters"] = one, many
        print(f"  peak RSS {many['peak_rss_mb']:.0f} MB vs {one['peak_rss_mb']:.0f} MB "
              f"(x{many['peak_rss_mb'] / one['peak_rss_mb']:.2f}); throughput "
              f"{many['requests_per_s'] / one['requests_per_s']:.0%} of one adapter's", flush=True)  # fmt: skip
    if args.soak_s > 0 and "soak" not in skip:
        print(f"soak: eight adapters, c=64, 10% bad requests, {args.soak_s:.0f} s, then SIGTERM", flush=True)
        server = loratune_server(eight, work, "soak")
        result = soak(server, texts, [r.name for r in eight], args.soak_s)
        server.log.close()
        record["soak"] = result
        print(_line("  soak", result), flush=True)
        print(
            f"  errors before SIGTERM: {result['errors_before_sigterm'] or 'none'}; RSS after warm-up "
            f"{result['rss_after_warmup_mb']:.0f} MB, at the end {result['rss_end_mb']:.0f} MB",
            flush=True,
        )
        print(f"  after SIGTERM: {result['after_sigterm']}; exit {result['exit_code']}", flush=True)
    if "baseline" in record and "loratune" in record:
        print("loratune / baseline:", flush=True)
        for b, lt in zip(record["baseline"], record["loratune"], strict=True):
            print(f"  c={b['concurrency']:<4} throughput x{lt['requests_per_s'] / b['requests_per_s']:.2f}, "
                  f"p50 {lt['p50_ms']:.1f} vs {b['p50_ms']:.1f} ms, p99 {lt['p99_ms']:.1f} vs {b['p99_ms']:.1f} ms",
                  flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
