"""`loratune serve` over HTTP, in a subprocess on a free loopback port: every route, every error code, answers equal
to `loratune predict`'s, the concurrency bound, draining on SIGTERM, and clients that misbehave."""

from __future__ import annotations

import json
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from loratune.runs.folder import load_run

TEXTS = ["great movie", "the plot was really awful", "a very great scene with music"]


@pytest.fixture
def two(serve, lora_runs):
    """A server holding the two LoRA runs as `a` and `b`."""
    return serve("--name", f"a={lora_runs[0]}", "--name", f"b={lora_runs[1]}", "--max-concurrent-requests", "4")


def probabilities(run_dir, texts):
    predictor = load_run(run_dir).predictor(device="cpu", precision="fp32")
    return predictor.labels, predictor.predict_proba(texts).numpy()


def as_matrix(answers, labels):
    return np.array([[{e["label"]: e["score"] for e in row}[label] for label in labels] for row in answers])


def test_predict_answers_as_tei_does_and_as_loratune_predict_does(two, lora_runs):
    labels, expected = probabilities(lora_runs[1], TEXTS)
    one = two.post("/predict", {"inputs": TEXTS[0], "adapter": "b"})
    assert one.status_code == 200
    entries = one.json()
    assert [set(e) for e in entries] == [{"label", "score"}] * len(labels)  # TEI's shape: every label, best first
    assert [e["score"] for e in entries] == sorted((e["score"] for e in entries), reverse=True)
    batch = two.post("/predict", {"inputs": [[t] for t in TEXTS], "adapter": "b"}).json()
    flat = two.post("/predict", {"inputs": TEXTS, "adapter": "b"}).json()
    assert batch == flat  # a flat list is a batch for a single-text adapter
    np.testing.assert_allclose(as_matrix(batch, labels), expected, atol=1e-4)
    np.testing.assert_allclose(as_matrix([entries], labels), expected[:1], atol=1e-4)
    top = two.post("/predict", {"inputs": TEXTS[0], "adapter": "b", "top_k": 1}).json()
    assert top == entries[:1]
    raw = two.post("/predict", {"inputs": TEXTS[0], "adapter": "b", "raw_scores": True}).json()
    assert sum(e["score"] for e in raw) != pytest.approx(1.0)  # logits, not probabilities
    assert [e["label"] for e in raw] == [e["label"] for e in entries]


def test_texts_for_two_adapters_sent_at_once_get_their_own_adapters_answers(two, lora_runs):
    expected = {name: probabilities(run, TEXTS) for name, run in zip("ab", lora_runs, strict=True)}
    jobs = [(name, text) for text in TEXTS for name in "ab"] * 4
    with ThreadPoolExecutor(4) as pool:  # the server takes 4 at a time (the fixture `two`)
        answers = list(pool.map(lambda job: two.post("/predict", {"inputs": job[1], "adapter": job[0]}), jobs))
    for (name, text), answer in zip(jobs, answers, strict=True):
        assert answer.status_code == 200, answer.text
        labels, probs = expected[name]
        np.testing.assert_allclose(as_matrix([answer.json()], labels)[0], probs[TEXTS.index(text)], atol=1e-4)


def test_v1_routes_answer_as_vllm_does(two, lora_runs):
    models = two.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["a", "b"]
    assert all(m["parent"] and m["object"] == "model" for m in models["data"])
    answer = two.post("/v1/classify", {"model": "a", "input": TEXTS})
    assert answer.status_code == 200
    body = answer.json()
    labels, expected = probabilities(lora_runs[0], TEXTS)
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    np.testing.assert_allclose([d["probs"] for d in body["data"]], expected, atol=1e-4)
    assert [d["label"] for d in body["data"]] == [labels[i] for i in expected.argmax(1)]
    assert body["usage"]["prompt_tokens"] > 0 and body["model"] == "a"


def test_info_health_and_metrics(two):
    info = two.get("/info").json()
    assert info["max_client_batch_size"] == 32 and info["model_dtype"] == "fp32"
    assert [a["name"] for a in info["adapters"]] == ["a", "b"]
    assert info["model_type"]["classifier"]["id2label"] == {"0": "bad", "1": "good"}
    assert two.get("/health").status_code == 200
    two.post("/predict", {"inputs": "great", "adapter": "a"})
    two.post("/predict", {"inputs": "great", "adapter": "nope"})
    metrics = two.get("/metrics").text
    assert 'loratune_request_success_total{adapter="a"} 1.0' in metrics
    assert 'loratune_request_failure_total{adapter="",err="NotFound"} 1.0' in metrics
    assert "loratune_batch_size_bucket" in metrics and "loratune_request_queue_duration_bucket" in metrics


@pytest.mark.parametrize(
    ("body", "status", "error_type", "words"),
    [
        ({"inputs": "x", "adapter": "nope"}, 404, "NotFound", "No adapter named 'nope'"),
        ({"inputs": "x"}, 422, "Validation", "several adapters"),
        ({"inputs": "x", "adapter": "a", "topk": 2}, 422, "Validation", "Unknown field 'topk'"),
        ({"inputs": 3, "adapter": "a"}, 422, "Validation", "inputs"),
        ({"inputs": [], "adapter": "a"}, 422, "Validation", "inputs is empty"),
        ({"inputs": [["a", "b"]], "adapter": "a"}, 422, "Validation", "single texts, not pairs"),
        ({"inputs": ["t"] * 33, "adapter": "a"}, 413, "Validation", "--max-client-batch-size"),
        ({"inputs": "x", "adapter": "a", "top_k": 0}, 422, "Validation", "top_k"),
    ],
)
def test_bad_requests_get_their_4xx_as_tei_json(two, body, status, error_type, words):
    answer = two.post("/predict", body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error_type"] == error_type and words in answer.json()["error"]


def test_malformed_json_huge_bodies_and_unknown_routes(two):
    bad = two.client.post("/predict", content=b'{"inputs": "x",', headers={"content-type": "application/json"})
    assert bad.status_code == 422 and "not valid JSON" in bad.json()["error"]
    huge = two.client.post("/predict", content=b"x" * 10_000_000, headers={"content-type": "application/json"})
    assert huge.status_code == 413 and "--payload-limit" in huge.json()["error"]
    assert two.get("/nowhere").status_code == 404 and two.get("/nowhere").json()["error_type"] == "NotFound"
    assert two.get("/health").status_code == 200  # none of it hurt the server


def test_a_100000_character_text_is_truncated_by_default_and_refused_when_asked(two, serve, lora_runs):
    long = "great movie " * 8334
    assert two.post("/predict", {"inputs": long, "adapter": "a"}).status_code == 200
    refused = two.post("/predict", {"inputs": long, "adapter": "a", "truncate": False})
    assert refused.status_code == 413 and "truncate" in refused.json()["error"]
    strict = serve(lora_runs[0], "--no-auto-truncate")
    assert strict.post("/predict", {"inputs": long}).status_code == 413
    assert strict.post("/predict", {"inputs": long, "truncate": True}).status_code == 200


def test_an_api_key_guards_every_route_but_health(serve, lora_runs):
    guarded = serve(lora_runs[0], "--api-key", "s3cret")
    assert guarded.get("/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        answer = guarded.post("/predict", {"inputs": "great"}, headers=headers)
        assert answer.status_code == 401 and answer.json()["error_type"] == "Unauthorized"
        assert guarded.get("/info", headers=headers).status_code == 401
    ok = guarded.post("/predict", {"inputs": "great"}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def hold_open(url: str, body: bytes = b'{"inputs": "great movie", "adapter": "a"}') -> tuple[socket.socket, bytes]:
    """A request whose body is sent all but its last byte: accepted and in flight until `finish`."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[:-1])
    return sock, body[-1:]


def finish(sock: socket.socket, rest: bytes) -> tuple[int, dict]:
    sock.sendall(rest)
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def wait_until(check, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def in_flight(served) -> float:
    for line in served.get("/metrics").text.splitlines():
        if line.startswith("loratune_requests_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no in-flight gauge")


def test_beyond_max_concurrent_requests_the_server_answers_429_at_once(two):
    held = [hold_open(two.url) for _ in range(4)]
    wait_until(lambda: in_flight(two) == 4)
    flood = [two.post("/predict", {"inputs": "great", "adapter": "a"}) for _ in range(20)]
    assert {r.status_code for r in flood} == {429}
    assert flood[0].json()["error_type"] == "Overloaded"
    assert all(finish(sock, rest)[0] == 200 for sock, rest in held)  # the accepted ones are still answered
    assert two.post("/predict", {"inputs": "great", "adapter": "a"}).status_code == 200


def test_sigterm_answers_every_accepted_request_then_exits_0(two):
    held = [hold_open(two.url) for _ in range(3)]
    wait_until(lambda: in_flight(two) == 3)
    two.process.send_signal(signal.SIGTERM)
    wait_until(lambda: two.get("/health").status_code == 503)
    late = two.post("/predict", {"inputs": "great", "adapter": "a"})
    assert late.status_code == 503 and late.json()["error_type"] == "Unhealthy"
    assert two.process.poll() is None  # still waiting for the three
    answers = [finish(sock, rest) for sock, rest in held]
    assert [status for status, _ in answers] == [200, 200, 200]
    assert answers[0][1][0]["label"] in ("good", "bad")
    assert two.process.wait(timeout=30) == 0
    assert any("draining: 3 requests in flight" in line for line in two.lines)


def test_a_client_that_disconnects_mid_request_frees_its_place(two):
    sock, _ = hold_open(two.url)
    wait_until(lambda: in_flight(two) == 1)
    sock.close()
    wait_until(lambda: in_flight(two) == 0)
    # and one that goes away once its whole request is in, while its texts are being scored
    body = json.dumps({"inputs": ["great movie " * 20] * 32, "adapter": "a"}).encode()
    sock, rest = hold_open(two.url, body)
    sock.sendall(rest)
    sock.close()
    wait_until(lambda: in_flight(two) == 0)
    assert two.post("/predict", {"inputs": "great", "adapter": "a"}).status_code == 200


def test_ctrl_c_drains_and_exits_0_too(serve, lora_runs):
    served = serve(lora_runs[0])
    assert served.stop(signal.SIGINT) == 0


def test_a_bad_run_folder_is_refused_in_one_line_before_listening(tmp_path, lora_runs):
    import subprocess
    import sys

    broken = tmp_path / "broken"
    broken.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "loratune", "serve", str(lora_runs[0]), str(broken), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "broken" in done.stderr
    assert "listening" not in done.stderr


def test_a_multi_label_run_answers_sigmoid_scores_and_the_label_set_predict_chooses(serve, multi_label_run):
    served = serve(multi_label_run)
    texts = ["the music was great", "an actor and a story", "a film", "music story actor"]
    predictor = load_run(multi_label_run).predictor(device="cpu", precision="fp32")
    expected = predictor.predict(texts)
    answers = served.post("/predict", {"inputs": texts}).json()
    for answer, want in zip(answers, expected, strict=True):
        assert {e["label"] for e in answer if e["selected"]} == set(want["labels"])
        assert sum(e["score"] for e in answer) != pytest.approx(1.0)  # a sigmoid per label, not a softmax
        for entry in answer:
            assert entry["score"] == pytest.approx(want["probabilities"][entry["label"]], abs=1e-4)
    predictor.at_least_one = True
    filled = served.post("/predict", {"inputs": texts, "at_least_one": True}).json()
    for answer, want in zip(filled, predictor.predict(texts), strict=True):
        assert {e["label"] for e in answer if e["selected"]} == set(want["labels"])
    classified = served.post("/v1/classify", {"input": texts}).json()["data"]
    assert [set(d["labels"]) for d in classified] == [set(w["labels"]) for w in expected]


def test_bad_limits_and_a_port_in_use_are_refused_in_one_line_before_loading(capsys, lora_runs):
    from loratune.cli import main

    assert main(["serve", str(lora_runs[0]), "--max-batch-tokens", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --max-batch-tokens must be at least 1, got 0."
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", str(lora_runs[0]), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Could not listen on 127.0.0.1:{port}") and "loading" not in err
