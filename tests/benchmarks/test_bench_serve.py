"""The serving benchmark's soak expects the right status for each request it mixes in: checked on a real server."""

import importlib.util
import itertools
import sys

from conftest import REPO

BENCH = REPO / "benchmarks" / "bench_serve.py"


def _bench():
    sys.path.insert(0, str(BENCH.parent))  # it imports its siblings, as when run as a script
    spec = importlib.util.spec_from_file_location("bench_serve", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_soak_request_gets_the_status_the_soak_expects(serve, lora_runs):
    bench = _bench()
    served = serve("--name", f"a={lora_runs[0]}", "--name", f"b={lora_runs[1]}")
    seen = set()
    for body, want in itertools.islice(bench.soak_bodies(["great movie", "awful plot"], ["a", "b"]), 60):
        if isinstance(body, bytes):
            response = served.client.post("/predict", content=body, headers={"content-type": "application/json"})
        else:
            response = served.post("/predict", body)
        assert response.status_code == want, (body, response.text)
        seen.add(want)
    assert seen == {200, 404, 413, 422}
