"""lib.eval.judge against a small chat-completions server on loopback (never the network)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lib.cli import judge as judge_cli
from lib.eval import judge


class Judge:
    """The server's behaviour: prefers the answer containing ``good`` (or always 'A' when
    ``biased``); fails the first ``errors`` requests with 500 and stalls the next ``stalls``."""

    def __init__(self, biased=False, errors=0, stalls=0, body=None, ok=None):
        self.biased, self.errors, self.stalls = biased, errors, stalls
        self.body = body        # None: a completion; "nonjson", "nochoices" or "babble" (no verdict)
        self.ok = ok            # answer this many requests, then 500 for ever
        self.requests: list[dict] = []
        self.auth: list[str] = []


def serve(j: Judge):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            j.requests.append({"path": self.path, **body})
            j.auth.append(self.headers.get("Authorization", ""))
            if j.ok is not None and len(j.requests) > j.ok:
                j.errors = 1
            if j.errors:
                j.errors -= 1
                self.send_response(500)
                self.end_headers()
                return
            if j.stalls:
                j.stalls -= 1
                time.sleep(1.5)
            user = body["messages"][-1]["content"]
            first = user.split("[Answer A]")[1].split("[Answer B]")[0]
            second = user.split("[Answer B]")[1]
            verdict = "A" if j.biased else ("A" if "good" in first else "B" if "good" in second else "tie")
            if j.body == "babble":
                verdict = "Both answers have merit."
            out = b"<html>gateway</html>" if j.body == "nonjson" else json.dumps({"object": "x"}).encode() \
                if j.body == "nochoices" else json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": verdict}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.handle_error = lambda request, address: None     # a client that gave up (broken pipe): not news
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


ITEMS = ([{"id": i, "prompt": f"q{i}", "a": "good answer", "b": "bad"} for i in range(6)]
         + [{"id": 6 + i, "prompt": "q", "a": "bad", "b": "good"} for i in range(2)]
         + [{"id": 8 + i, "prompt": "q", "a": "meh", "b": "meh too"} for i in range(2)])


@pytest.fixture
def client_for(monkeypatch):
    servers = []
    monkeypatch.setenv("JUDGE_KEY", "sekret")

    def make(j, **kw):
        srv = serve(j)
        servers.append(srv)
        return judge.make_client(f"http://127.0.0.1:{srv.server_address[1]}/v1", "JUDGE_KEY", **kw)
    yield make
    for s in servers:
        s.shutdown()


def test_both_orders_requests_and_tally(client_for):
    j = Judge()
    rows = judge.judge_items(client_for(j), "toy-judge", ITEMS)
    assert len(j.requests) == 20 and {r["path"] for r in j.requests} == {"/v1/chat/completions"}
    assert all(r["model"] == "toy-judge" and r["temperature"] == 0.0 for r in j.requests)
    assert set(j.auth) == {"Bearer sekret"}
    # the second request of an item shows the answers swapped
    assert "[Answer A]\ngood answer" in j.requests[0]["messages"][1]["content"]
    assert "[Answer A]\nbad" in j.requests[1]["messages"][1]["content"]
    assert [r["result"] for r in rows] == ["win"] * 6 + ["loss"] * 2 + ["tie"] * 2
    assert rows[0]["a_first"] == "A" and rows[0]["b_first"] == "B"
    t = judge.tally(rows, n_boot=2000)
    assert (t["n"], t["win"], t["tie"], t["loss"]) == (10, 0.6, 0.2, 0.2)
    assert t["win_ci"][0] < 0.6 < t["win_ci"][1] and 0.2 <= t["win_ci"][0] and t["win_ci"][1] <= 0.95


def test_position_bias_cancels_to_ties(client_for):
    rows = judge.judge_items(client_for(Judge(biased=True)), "m", ITEMS)
    assert {r["result"] for r in rows} == {"tie"}


def test_retries_on_errors_and_timeouts(client_for):
    j = Judge(errors=2, stalls=1)
    rows = judge.judge_items(client_for(j, timeout=0.5, max_retries=4), "m", ITEMS[:1])
    assert rows[0]["result"] == "win"
    assert len(j.requests) == 2 + 1 + 2          # two 500s, one timed out, then both orders
    with pytest.raises(Exception):
        judge.judge_items(client_for(Judge(errors=5), max_retries=1), "m", ITEMS[:1])


def test_missing_key_and_bad_items(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match="NO_SUCH_KEY"):
        judge.make_client("http://127.0.0.1:1/v1", "NO_SUCH_KEY")
    p = tmp_path / "items.jsonl"
    p.write_text('{"prompt": "q", "a": "x", "b": "y"}\n{"prompt": "q", "a": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"items.jsonl:2: .*\['a', 'b'\]"):
        judge.read_items(p)
    assert judge.parse_verdict("B is better") == "B" and judge.parse_verdict("Tie.") == "tie"
    assert judge.parse_verdict("no idea") is None


def test_cli_writes_verdicts_and_tally(tmp_path, client_for, monkeypatch):
    j = Judge()
    srv = serve(j)
    try:
        items = tmp_path / "items.jsonl"
        items.write_text("".join(json.dumps(i) + "\n" for i in ITEMS), encoding="utf-8")
        out = tmp_path / "verdicts.jsonl"
        judge_cli.main([str(items), "--base-url", f"http://127.0.0.1:{srv.server_address[1]}/v1", "--model", "m",
                    "--api-key-env", "JUDGE_KEY", "--out", str(out)])
        assert len(out.read_text(encoding="utf-8").splitlines()) == 10
        t = json.loads(out.with_suffix(".tally.json").read_text())
        assert (t["win"], t["tie"], t["loss"]) == (0.6, 0.2, 0.2)
    finally:
        srv.shutdown()


def test_judge_section_of_a_profile(tmp_path, client_for):
    from lib.core.params import ParamsError, load_profile
    from lib.run.check import check_profile
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: {}\njudge:\n  base_url: ftp://x\n  timeot: 3\n  max_retries: -1\n".format(
        (judge.Path(__file__).parents[1] / "params" / "micro.yaml").as_posix()), encoding="utf-8")
    probs = check_profile(load_profile(bad), [])
    assert len(probs) == 3 and all("bad.yaml:" in p and "judge" in p for p in probs)
    assert "timeot" in probs[1] and "bad.yaml:4" in probs[1]
    with pytest.raises(ParamsError):
        judge.settings(str(bad))
    j = Judge()
    srv = serve(j)
    try:
        good = tmp_path / "good.yaml"
        good.write_text(f"judge:\n  base_url: http://127.0.0.1:{srv.server_address[1]}/v1\n  model: from-yaml\n"
                        "  api_key_env: JUDGE_KEY\n  n_boot: 50\n", encoding="utf-8")
        items = tmp_path / "items.jsonl"
        items.write_text("".join(json.dumps(i) + "\n" for i in ITEMS[:2]), encoding="utf-8")
        judge_cli.main([str(items), "--params", str(good), "--out", str(tmp_path / "v.jsonl")])
        assert {r["model"] for r in j.requests} == {"from-yaml"}
    finally:
        srv.shutdown()


def test_answer_items_from_two_models(tmp_path, tiny_assets):
    p = tmp_path / "p.jsonl"
    p.write_text('{"instruction": "The cat sees", "input": "", "output": "x", "lang": "en"}\n'
                 '{"instruction": "고양이가", "input": "", "output": "y"}\n', encoding="utf-8")
    rows = judge.answer_items(str(tiny_assets["model"]), str(tiny_assets["model"]), p, n=5, max_new_tokens=3)
    assert [r["lang"] for r in rows] == ["en", "ko"] and all(r["a"] == r["b"] for r in rows)


# ---------------------------------------------------------------------------- the CLI fails in one line (issue 27)

def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def items_file(tmp_path, items=ITEMS):
    f = tmp_path / "items.jsonl"
    f.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    return f


def url(srv):
    return f"http://127.0.0.1:{srv.server_address[1]}/v1"


@pytest.mark.parametrize("body, message", [
    ("nonjson", "the reply is not a chat completion"), ("nochoices", "the reply is not a chat completion"),
    ("500", "HTTP 500 after 2 tries")])
def test_cli_bad_endpoint_replies_are_one_line(tmp_path, capsys, body, message):
    srv = serve(Judge(body=body, errors=10 ** 6 if body == "500" else 0))
    try:
        out = tmp_path / "v.jsonl"
        t0 = time.time()
        assert judge_cli.main([str(items_file(tmp_path)), "--base-url", url(srv), "--max-retries", "1",
                               "--out", str(out)]) == 1
        assert time.time() - t0 < 10
        assert message in one_line(capsys.readouterr().err)
    finally:
        srv.shutdown()


def test_cli_dead_or_hung_endpoint_fails_within_max_wait(tmp_path, capsys):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                   # nothing listens there
    t0 = time.time()
    assert judge_cli.main([str(items_file(tmp_path)), "--base-url", f"http://127.0.0.1:{port}/v1",
                           "--max-wait", "2", "--out", str(tmp_path / "v.jsonl")]) == 1
    assert time.time() - t0 < 4
    assert "unreachable after" in one_line(capsys.readouterr().err)
    srv = serve(Judge(stalls=10 ** 6))          # answers after 1.5 s each time
    try:
        t0 = time.time()
        assert judge_cli.main([str(items_file(tmp_path)), "--base-url", url(srv), "--timeout", "0.3",
                               "--max-retries", "50", "--max-wait", "1.5", "--out", str(tmp_path / "w.jsonl")]) == 1
        assert time.time() - t0 < 3.5
        assert "timed out after" in one_line(capsys.readouterr().err)
    finally:
        srv.shutdown()


@pytest.mark.parametrize("flags, message", [
    (["--base-url", "ftp://x"], "--base-url: judge.base_url must start with http:// or https://, got 'ftp://x'"),
    (["--timeout", "-1"], "--timeout: judge.timeout must be > 0, got -1.0"),
    (["--max-unparsed", "2"], "--max-unparsed: judge.max_unparsed must be a share between 0 and 1, got 2.0"),
    (["--timeout", "x"], None)])
def test_cli_flags_are_validated_like_the_judge_section(tmp_path, capsys, flags, message):
    if message is None:                         # argparse's own refusal: usage and exit 2
        with pytest.raises(SystemExit) as e:
            judge_cli.main([str(items_file(tmp_path)), *flags, "--out", str(tmp_path / "v.jsonl")])
        assert e.value.code == 2
        return
    assert judge_cli.main([str(items_file(tmp_path)), *flags, "--out", str(tmp_path / "v.jsonl")]) == 1
    assert one_line(capsys.readouterr().err) == f"error: {message}"


def test_cli_keeps_verdicts_and_resumes_from_them(tmp_path, capsys):
    out = tmp_path / "v.jsonl"
    f = items_file(tmp_path)
    srv = serve(Judge(ok=6))                    # three items judged, then the endpoint fails
    try:
        assert judge_cli.main([str(f), "--base-url", url(srv), "--max-retries", "0", "--out", str(out)]) == 1
        assert "HTTP 500" in one_line(capsys.readouterr().err)
    finally:
        srv.shutdown()
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [0, 1, 2]
    with open(out, "a") as fh:
        fh.write('{"id": 3, "key": "cut sh')    # a kill in the middle of a line
    j = Judge()
    srv = serve(j)
    try:
        assert judge_cli.main([str(f), "--base-url", url(srv), "--out", str(out)]) == 0
    finally:
        srv.shutdown()
    assert len(j.requests) == 2 * 7
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(10))
    t = json.loads(out.with_suffix(".tally.json").read_text())
    assert (t["win"], t["tie"], t["loss"], t["unparsed"]) == (0.6, 0.2, 0.2, 0)
    other = items_file(tmp_path / "..", [{**ITEMS[0], "a": "changed"}])
    assert judge_cli.main([str(other), "--base-url", url(srv), "--out", str(out)]) == 1
    assert "holds a verdict for item 0 of other items" in one_line(capsys.readouterr().err)


def test_unparsed_replies_are_not_ties(tmp_path, capsys):
    srv = serve(Judge(body="babble"))
    try:
        f = items_file(tmp_path)
        assert judge_cli.main([str(f), "--base-url", url(srv), "--out", str(tmp_path / "v.jsonl")]) == 1
        assert "10 of 10 items got a reply naming no verdict" in one_line(capsys.readouterr().err)
        assert judge_cli.main([str(f), "--base-url", url(srv), "--max-unparsed", "1",
                               "--out", str(tmp_path / "v.jsonl")]) == 1       # nothing left to tally
        assert "no items to tally" in one_line(capsys.readouterr().err)
    finally:
        srv.shutdown()
