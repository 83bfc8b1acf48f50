#!/usr/bin/env python3
"""End-to-end tests of `ponder serve` on the bundled model.

usage: server_test.py PONDER_BINARY SOURCE_DIR WORK_DIR

Starts the server twice on free ports (`--port 0`; the port is read from its log):
  A: no keys, the three scenario profiles: the HTTP contract (health, models, profiles,
     completions, SSE format, errors, limits, metrics), the official `openai` npm client
     (installed into WORK_DIR/npm by `npm install openai@4`), and a streaming client killed
     after its first chunk (curl), whose request must be cancelled and its KV cache freed;
  B: --api-keys, --admin-key, --max-active 1 --max-queue 1, profiles copied to WORK_DIR:
     auth (401/403, the key's tenant), profile reload (a broken file keeps the old profile),
     overload (429 with Retry-After).
Prints one line per check and 'N passed, M failed'; exits 1 on a failure, 77 (skipped) when
everything ran but the npm client part could not (no node/npm on this machine).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check, completed, http, metrics, wait_idle  # noqa: E402

PONDER, SOURCE, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
MODEL_DIR = os.path.join(SOURCE, "model", "zoo", "ponder-micro")
PROFILE_DIR = os.path.join(SOURCE, "scenarios", "profiles")
PROFILES = [os.path.join(PROFILE_DIR, n) for n in ("finance.json", "education.json", "chat.json")]
MODEL = "ponder-micro"
os.makedirs(WORK, exist_ok=True)

skipped = []


# An arithmetic chain without its '=': at a fixed depth the model answers with a digit and
# repeats another one until max_tokens (about 3 s at 1024 iterations per token on one core),
# so the request is still running when its client goes away.
LONG_ANSWER = "+1" * 16


def Server(name, *args):
    return harness.Server(PONDER, MODEL_DIR, WORK, name, *args)


def jbody(text):
    try:
        return json.loads(text)
    except ValueError:
        return {}


def is_error(status, body, want_status, param=None):
    e = jbody(body).get("error", {})
    return (status == want_status and isinstance(e.get("message"), str) and e.get("type")
            and (param is None or e.get("param") == param))


def test_http_contract(s):
    b = s.base
    check("health answered 200 once loaded (503 only while loading)",
          200 in s.health_codes and s.health_codes <= {200, 503}, s.health_codes)
    st, _, body = http("GET", b + "/v1/models")
    check("GET /v1/models", st == 200 and jbody(body)["data"][0]["id"] == MODEL, body)
    st, _, body = http("GET", b + "/v1/profiles")
    names = [p["name"] for p in jbody(body).get("data", [])]
    check("GET /v1/profiles", st == 200 and sorted(names) == ["chat", "education", "finance"]
          and all(p["classes"] for p in jbody(body)["data"]), body)

    req = {"model": MODEL, "prompt": "w0x6?w", "max_tokens": 6, "profile": "finance",
           "return_token_steps": True}
    st, _, body = http("POST", b + "/v1/completions", req)
    c = jbody(body)
    u = c.get("usage", {})
    check("POST /v1/completions", st == 200 and c.get("object") == "text_completion"
          and c["choices"][0]["finish_reason"] in ("stop", "length")
          and u.get("steps_total", 0) > 0 and u.get("currency") == "USD" and "cost" in u
          and "flops" in u and u.get("tenant") == "default"
          and len(u.get("token_steps", [])) == u.get("completion_tokens"), body)

    # Server-sent events, read raw.
    st, hdr, body = http("POST", b + "/v1/chat/completions",
                         {"messages": [{"role": "user", "content": "j6a3?j"}], "max_tokens": 6,
                          "stream": True, "profile": "chat"})
    events = [e for e in body.split("\n\n") if e]
    chunks = [jbody(e[len("data: "):]) for e in events[:-1] if e.startswith("data: ")]
    check("SSE stream format", st == 200 and hdr.get("Content-Type", "").startswith(
        "text/event-stream") and events and events[-1] == "data: [DONE]"
        and all(ch.get("object") == "chat.completion.chunk" for ch in chunks)
        and chunks[0]["choices"][0]["delta"].get("role") == "assistant"
        and chunks[-1]["choices"][0]["finish_reason"] is not None, body[:500])

    # Errors.
    st, _, body = http("POST", b + "/v1/completions", {"prompt": "x", "temperature": "hot"})
    check("wrong type: 400 naming the field", is_error(st, body, 400, "temperature"), body)
    st, _, body = http("POST", b + "/v1/completions", raw=b"{not json")
    check("malformed JSON: 400", is_error(st, body, 400), body)
    st, _, body = http("POST", b + "/v1/completions", {"prompt": "x", "profile": "nope"})
    check("unknown profile: 400", is_error(st, body, 400, "profile"), body)
    st, _, body = http("POST", b + "/v1/completions",
                       {"prompt": "x", "profile": "finance", "task_class": "nope"})
    check("unknown task class: 400", is_error(st, body, 400, "task_class"), body)
    st, _, body = http("POST", b + "/v1/completions", {"prompt": "x", "max_tokens": 49})
    check("max_tokens above --max-tokens: 400", is_error(st, body, 400, "max_tokens")
          and "48" in jbody(body)["error"]["message"], body)
    st, _, body = http("POST", b + "/v1/completions", {"prompt": "+1" * 100 + "="})
    check("prompt above --max-prompt-tokens: 400", is_error(st, body, 400, "prompt")
          and "at most 50" in jbody(body)["error"]["message"], body)
    st, _, body = http("POST", b + "/v1/completions", raw=json.dumps(
        {"prompt": "x", "pad": "y" * 70000}).encode())
    check("body above --max-body-bytes: 413", is_error(st, body, 413), body)
    st, hdr, body = http("POST", b + "/v1/completions",
                         {"prompt": "w0x6?w", "max_tokens": 40, "min_steps": 4096,
                          "max_steps": 4096})
    check("more KV than --kv-budget-mb: 400 (never admissible), no Retry-After",
          is_error(st, body, 400) and jbody(body)["error"]["code"] == "kv_budget_exceeded"
          and "Retry-After" not in hdr, body)
    st, _, body = http("GET", b + "/v1/nothing")
    check("unknown route: 404 JSON", is_error(st, body, 404), body)
    st, m = metrics(b)
    check("GET /metrics", st == 200 and m.get("ponder_engine_ready") == 1
          and "ponder_num_requests_running" in m and "ponder_kv_cache_used_bytes" in m, m)


def test_openai_client(s):
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        skipped.append("the openai npm client part: node or npm is not installed "
                       "(apt-get install nodejs npm)")
        print(f"[SKIP] {skipped[-1]}", flush=True)
        return
    prefix = os.path.join(WORK, "npm")
    if not os.path.exists(os.path.join(prefix, "node_modules", "openai", "package.json")):
        os.makedirs(prefix, exist_ok=True)
        p = subprocess.run([npm, "install", "--prefix", prefix, "--cache",
                            os.path.join(WORK, "npm-cache"), "--no-audit", "--no-fund",
                            "--loglevel=error", "openai@4"],
                           capture_output=True, text=True, timeout=240)
        check("npm install openai@4", p.returncode == 0, p.stderr[-1500:])
        if p.returncode != 0:
            return
    env = dict(os.environ, NODE_PATH=os.path.join(prefix, "node_modules"))
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openai_client.cjs")
    p = subprocess.run([node, script, s.base + "/v1", MODEL], capture_output=True, text=True,
                       timeout=120, env=env)
    print(p.stdout, end="", flush=True)
    check("openai npm client", p.returncode == 0, p.stderr[-1500:])


def test_disconnect_cancels(s):
    b = s.base
    idle, before = wait_idle(b)
    check("idle before the disconnect test", idle, before)
    if not shutil.which("curl"):
        check("curl is installed (apt-get install curl)", False)
        return
    body = json.dumps({"prompt": LONG_ANSWER, "max_tokens": 44, "stream": True,
                       "min_steps": 1024, "max_steps": 1024, "exit": "none",
                       "profile": "finance", "task_class": "routine_transaction",
                       "deadline_ms": 600000})
    curl = subprocess.Popen(["curl", "-sN", "--no-buffer", "-H", "Content-Type: application/json",
                             "-d", body, b + "/v1/completions"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first = ""
    while not first.startswith("data:"):  # skip keep-alive comments and blank lines
        line = curl.stdout.readline()
        if not line:
            break
        first = line.decode()
    _, during = metrics(b)
    curl.kill()
    curl.wait()
    check("stream started", first.startswith("data: {") and during.get("ponder_num_requests_running") == 1
          and during.get("ponder_kv_cache_used_bytes", 0) > 0, (first, during))
    idle, after = wait_idle(b, timeout=10)
    check("client gone: running requests and KV bytes back to zero", idle, after)
    check("client gone: the request was cancelled, not completed",
          after.get("ponder_requests_total:cancelled", 0)
          == before.get("ponder_requests_total:cancelled", 0) + 1
          and completed(after) == completed(before), (before, after))


def test_auth_reload(s, profile_copy):
    b = s.base
    key = {"Authorization": "Bearer sk-test-acme"}
    admin = {"Authorization": "Bearer admin-secret"}
    req = {"prompt": "w0x6?w", "max_tokens": 4, "tenant": "someone-else"}
    st, hdr, body = http("POST", b + "/v1/completions", req)
    check("no key: 401", is_error(st, body, 401), body)
    st, _, body = http("POST", b + "/v1/completions", req,
                       headers={"Authorization": "Bearer sk-test-acmf"})
    check("wrong key: 401", is_error(st, body, 401), body)
    st, _, body = http("GET", b + "/v1/models")
    check("no key on /v1/models: 401", is_error(st, body, 401), body)
    st, _, body = http("POST", b + "/v1/completions", req, headers=key)
    check("valid key: 200, the key's tenant wins over the body's",
          st == 200 and jbody(body)["usage"]["tenant"] == "acme", body)
    st, hdr, body = http("POST", b + "/v1/completions", req,
                         headers={"Authorization": "Bearer sk-test-trial"})
    check("a tenant whose budget rejects: 429 insufficient_quota, no Retry-After",
          is_error(st, body, 429) and jbody(body)["error"]["code"] == "budget_exhausted"
          and jbody(body)["error"]["type"] == "insufficient_quota" and "Retry-After" not in hdr,
          (st, hdr, body))
    st, _, _ = http("GET", b + "/health")
    check("health needs no key", st == 200)
    st, _, body = http("GET", b + "/metrics", headers=key)
    check("metrics with an API key (not admin): 403", is_error(st, body, 403), body)
    st, _ = metrics(b, admin)
    check("metrics with the admin key: 200", st == 200)

    st, _, body = http("POST", b + "/v1/profiles/reload", headers=key)
    check("reload without the admin key: 403", is_error(st, body, 403), body)
    with open(profile_copy) as f:
        good = f.read()
    st, _, body = http("GET", b + "/v1/profiles", headers=key)
    old = [p for p in jbody(body).get("data", []) if p["name"] == "finance"]
    broken = json.loads(good)
    cls = broken["task_classes"][0]
    cls["min_steps"] = cls["max_steps"] + 1
    with open(profile_copy, "w") as f:
        json.dump(broken, f)
    st, _, body = http("POST", b + "/v1/profiles/reload", headers=admin)
    check("reload of an invalid profile: 400 with the error",
          is_error(st, body, 400) and "max_steps" in jbody(body)["error"]["message"], body)
    st, _, body = http("GET", b + "/v1/profiles", headers=key)
    fin = [p for p in jbody(body).get("data", []) if p["name"] == "finance"]
    check("the old profile is kept", old and fin == old, body[:400])
    changed = json.loads(good)
    changed["description"] = "Reloaded: " + changed["description"]
    with open(profile_copy, "w") as f:
        json.dump(changed, f)
    st, _, body = http("POST", b + "/v1/profiles/reload", headers=admin)
    fin = [p for p in jbody(body).get("data", []) if p["name"] == "finance"]
    check("reload of a valid profile: 200 and the new profile",
          st == 200 and fin and fin[0]["description"].startswith("Reloaded: "), body[:400])


def test_overload(s):
    b = s.base
    key = {"Authorization": "Bearer sk-test-acme"}
    req = {"prompt": "w0x6?w", "max_tokens": 3, "min_steps": 512, "max_steps": 512,
           "exit": "none", "deadline_ms": 600000}
    results = []
    lock = threading.Lock()

    def fire():
        r = http("POST", b + "/v1/completions", req, headers=key)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=fire) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    codes = sorted(r[0] for r in results)
    rejected = [r for r in results if r[0] == 429]
    check("overload: some requests served, some 429", 200 in codes and rejected, codes)
    check("429 has Retry-After and an OpenAI error body",
          rejected and all(r[1].get("Retry-After", "").isdigit() and is_error(r[0], r[2], 429)
                           for r in rejected), rejected[:1])
    idle, m = wait_idle(b, {"Authorization": "Bearer admin-secret"})
    check("overload: idle afterwards", idle and m.get("ponder_requests_total:rejected", 0) >= 1, m)


def test_queued_disconnect(s):
    """A streaming client that goes away while its request waits (--max-active 1): the
    keep-alive comments find out, and the request leaves the queue before the running one
    ends."""
    b = s.base
    key = {"Authorization": "Bearer sk-test-acme"}
    admin = {"Authorization": "Bearer admin-secret"}
    _, before = metrics(b, admin)
    deep = {"prompt": LONG_ANSWER, "max_tokens": 44, "min_steps": 1536, "max_steps": 1536,
            "exit": "none", "deadline_ms": 600000}
    first = threading.Thread(target=http, args=("POST", b + "/v1/completions", deep, key))
    first.start()
    deadline = time.time() + 10
    while metrics(b, admin)[1].get("ponder_num_requests_running") != 1 and time.time() < deadline:
        time.sleep(0.02)
    curl = subprocess.Popen(["curl", "-sN", "-H", "Content-Type: application/json",
                             "-H", "Authorization: " + key["Authorization"],
                             "-d", json.dumps({**deep, "stream": True}), b + "/v1/completions"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while metrics(b, admin)[1].get("ponder_num_requests_waiting") != 1 and time.time() < deadline:
        time.sleep(0.02)
    _, queued = metrics(b, admin)
    curl.kill()
    curl.wait()
    while time.time() < deadline:
        _, m = metrics(b, admin)
        if m.get("ponder_num_requests_waiting") == 0:
            break
        time.sleep(0.05)
    check("queued stream, client gone: cancelled while the other request still runs",
          queued.get("ponder_num_requests_waiting") == 1 and m.get("ponder_num_requests_waiting") == 0
          and m.get("ponder_num_requests_running") == 1
          and m.get("ponder_requests_total:cancelled", 0)
          == before.get("ponder_requests_total:cancelled", 0) + 1, (queued, m))
    first.join(timeout=60)


def main():
    t0 = time.time()
    a = Server("a", "--profiles", ",".join(PROFILES), "--max-tokens", "48",
               "--max-prompt-tokens", "50", "--max-body-bytes", "65536", "--kv-budget-mb", "256")
    try:
        test_http_contract(a)
        test_openai_client(a)
        test_disconnect_cancels(a)
        ranges = "bytes=" + "0-," * 50 + "0-"
        st, _, body = http("GET", a.base + "/health", headers={"Range": ranges})
        check("a Range header is ignored (200, the body once)",
              st == 200 and jbody(body).get("status") == "ok", (st, body[:200]))
        st, _, body = http("POST", a.base + "/v1/completions", raw=b"x" * 10000,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        check("a large form-encoded body: 413 saying to send JSON",
              st == 413 and "application/json" in jbody(body)["error"]["message"], body[:300])
        port = a.base.rsplit(":", 1)[1]
        p = subprocess.run([PONDER, "serve", "--model", MODEL_DIR, "--profiles", PROFILES[0],
                            "--port", port], capture_output=True, text=True, timeout=30)
        check("a second server on the same port: exit 1, the port in use",
              p.returncode == 1 and "in use" in p.stderr, (p.returncode, p.stderr[-500:]))
    finally:
        rc = a.stop()
    check("server A stops cleanly on SIGTERM", rc == 0, a.tail())

    copies = []
    for p in PROFILES:
        dst = os.path.join(WORK, os.path.basename(p))
        shutil.copyfile(p, dst)
        copies.append(dst)
    # Tenant "trial" of the first profile: no budget, and requests beyond it are refused.
    with open(copies[0]) as f:
        first = json.load(f)
    first.setdefault("tenants", {})["trial"] = {"budget": 0, "window_seconds": 3600,
                                                "on_exhausted": "reject"}
    with open(copies[0], "w") as f:
        json.dump(first, f, indent=1)
    keys = os.path.join(WORK, "keys.json")
    with open(keys, "w") as f:
        json.dump({"sk-test-acme": "acme", "sk-test-trial": "trial"}, f)
    bsrv = Server("b", "--profiles", ",".join(copies), "--api-keys", keys,
                  "--admin-key", "admin-secret", "--max-active", "1", "--max-queue", "1")
    try:
        test_auth_reload(bsrv, copies[0])
        test_overload(bsrv)
        test_queued_disconnect(bsrv)
    finally:
        rc = bsrv.stop()
    check("server B stops cleanly on SIGTERM", rc == 0, bsrv.tail())

    p = subprocess.run([PONDER, "serve", "--model", "/nonexistent", "--profiles", PROFILES[0],
                        "--port", "0"], capture_output=True, text=True, timeout=30)
    check("a model that fails to load: exit 1 naming it",
          p.returncode == 1 and "nonexistent" in p.stderr, p.stderr[-500:])

    print(f"{harness.passed} passed, {harness.failed} failed ({time.time() - t0:.1f} s)")
    if harness.failed:
        sys.exit(1)
    if skipped:
        print("SKIPPED: " + "; ".join(skipped))
        sys.exit(77)


if __name__ == "__main__":
    main()
