#!/usr/bin/env python3
"""Faults against a running `ponder serve`: each must end the affected request cleanly, free
its KV cache, count it in /metrics, and leave the server serving.

usage: faults_test.py PONDER_BINARY SOURCE_DIR WORK_DIR

The server runs on a copy of the bundled model (WORK_DIR/model) and of the finance and
chat profiles, with a 192 MiB KV budget, two API keys and an admin key; the finance copy
gives tenant "degrader" and tenant "rejecter" a budget that one request uses up.
Faults: a client that disconnects mid-stream; a deadline; budget exhaustion (degrade, then
reject); KV admission beyond the budget (never admissible: 400; more than fits at once:
queued, then served); a per-tenant stream limit; the reload of an invalid profile; the
checkpoint overwritten in place and then deleted while serving (the server keeps the
weights it loaded: outputs do not change).
After each: no request running or waiting, no KV used or reserved, the outcome counted, and
a normal request answered 200.
"""
import json
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check, http, metrics, wait_idle  # noqa: E402

PONDER, SOURCE, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
ADMIN = {"Authorization": "Bearer admin-key"}
KEYS = {"sk-acme": "acme", "sk-degrader": "degrader", "sk-rejecter": "rejecter"}
# The model's answer runs on past the '=': with exit "none" at a fixed depth, a request runs
# to max_tokens (deep, slow tokens), so faults find it still running.
LONG = "+1" * 16


def auth(tenant):
    return {"Authorization": "Bearer " + next(k for k, t in KEYS.items() if t == tenant)}


def body(text):
    try:
        return json.loads(text)
    except ValueError:
        return {}


def healthy_after(server, what, before, outcome, extra=0):
    """The server is idle, the outcome was counted (+1 + extra), and serves a request."""
    idle, after = wait_idle(server.base, ADMIN, timeout=20)
    check(f"{what}: nothing running or waiting, KV used and reserved back to 0", idle, after)
    key = "ponder_requests_total:" + outcome
    check(f"{what}: counted as {outcome} in /metrics",
          after.get(key, 0) >= before.get(key, 0) + 1 + extra, (before.get(key), after.get(key)))
    st, _, text = http("POST", server.base + "/v1/completions",
                       {"prompt": "w0x6?w", "max_tokens": 4}, auth("acme"))
    check(f"{what}: the server keeps serving (200)", st == 200, (st, text[:300]))


def disconnect_mid_stream(s):
    _, before = metrics(s.base, ADMIN)
    req = {"prompt": LONG, "max_tokens": 40, "min_steps": 384, "max_steps": 384, "exit": "none",
           "stream": True, "deadline_ms": 600000}
    curl = subprocess.Popen(["curl", "-sN", "-H", "Content-Type: application/json",
                             "-H", "Authorization: " + auth("acme")["Authorization"], "-d", json.dumps(req),
                             s.base + "/v1/completions"], stdout=subprocess.PIPE)
    first = ""
    while not first.startswith("data: "):  # keep-alive comments until the first token
        line = curl.stdout.readline().decode()
        if not line:
            break
        first = line
    _, during = metrics(s.base, ADMIN)
    curl.kill()
    curl.wait()
    check("disconnect: the stream had started and held KV",
          first.startswith("data: ") and during.get("ponder_kv_cache_used_bytes", 0) > 0,
          (first, during.get("ponder_kv_cache_used_bytes")))
    healthy_after(s, "disconnect mid-stream", before, "cancelled")


def deadline(s):
    _, before = metrics(s.base, ADMIN)
    st, _, text = http("POST", s.base + "/v1/completions",
                       {"prompt": LONG, "max_tokens": 40, "min_steps": 384, "max_steps": 384,
                        "exit": "none", "deadline_ms": 100}, auth("acme"))
    b = body(text)
    check("deadline: 200 with finish_reason deadline and what it had",
          st == 200 and b["choices"][0]["finish_reason"] == "deadline"
          and b["usage"]["completion_tokens"] < 40, (st, text[:300]))
    healthy_after(s, "deadline", before, "deadline")


def budget(s):
    # One request spends each budget (1e-9 of the currency); then degrade / reject.
    for tenant in ("degrader", "rejecter"):
        st, _, text = http("POST", s.base + "/v1/completions",
                           {"prompt": "+4+8+2*3+3=", "max_tokens": 2,
                            "task_class": "market_analysis"}, auth(tenant))
        check(f"budget: the first request of {tenant} is served", st == 200, (st, text[:200]))
    _, before = metrics(s.base, ADMIN)
    st, _, text = http("POST", s.base + "/v1/completions",
                       {"prompt": "+4+8+2*3+3=", "max_tokens": 3, "task_class": "market_analysis",
                        "return_token_steps": True}, auth("degrader"))
    b = body(text)
    steps = b.get("usage", {}).get("token_steps", [])
    check("budget exhausted, degrade: served at the class's min_steps",
          st == 200 and steps and all(x <= 8 for x in steps), (st, text[:400]))
    st, hdr, text = http("POST", s.base + "/v1/completions",
                         {"prompt": "+4+8+2*3+3=", "max_tokens": 3}, auth("rejecter"))
    check("budget exhausted, reject: 429 budget_exhausted",
          st == 429 and body(text)["error"]["code"] == "budget_exhausted", (st, text[:300]))
    healthy_after(s, "budget exhausted", before, "rejected")


def kv_admission(s):
    _, before = metrics(s.base, ADMIN)
    st, _, text = http("POST", s.base + "/v1/completions",
                       {"prompt": LONG, "max_tokens": 24, "min_steps": 4096, "max_steps": 4096},
                       auth("acme"))
    check("KV beyond the whole budget: 400 kv_budget_exceeded",
          st == 400 and body(text)["error"]["code"] == "kv_budget_exceeded", (st, text[:300]))
    # Each reserves about 69 MB at 700 steps (1402 slots x 3 pages of 16 positions x 16 KiB
    # for a 17-token prompt and 24 tokens): two fit in the budget at once, the third waits
    # for one of them, then all are served.
    results = []

    def one():
        results.append(http("POST", s.base + "/v1/completions",
                            {"prompt": LONG, "max_tokens": 24, "min_steps": 700,
                             "max_steps": 700, "exit": "none"}, auth("acme"))[0])

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    peak = 0
    while any(t.is_alive() for t in threads):
        _, m = metrics(s.base, ADMIN)
        peak = max(peak, m.get("ponder_kv_cache_reserved_bytes", 0))
        time.sleep(0.02)
    for t in threads:
        t.join()
    _, m = metrics(s.base, ADMIN)
    check("KV admission: requests beyond the budget wait and are all served; reservations "
          "never pass the budget",
          results == [200, 200, 200] and 0 < peak <= m.get("ponder_kv_cache_capacity_bytes", 0),
          (results, peak))
    healthy_after(s, "KV admission", before, "rejected")


def stream_limit(s):
    _, before = metrics(s.base, ADMIN)
    req = {"prompt": LONG, "max_tokens": 40, "min_steps": 256, "max_steps": 256, "exit": "none",
           "stream": True, "deadline_ms": 600000}
    hold = [subprocess.Popen(["curl", "-sN", "-H", "Content-Type: application/json",
                              "-H", "Authorization: " + auth("acme")["Authorization"], "-d", json.dumps(req),
                              s.base + "/v1/completions"], stdout=subprocess.PIPE)
            for _ in range(2)]
    for c in hold:
        line = b"start"
        while line and not line.startswith(b"data: "):  # keep-alives until the first token
            line = c.stdout.readline()
    st, hdr, text = http("POST", s.base + "/v1/completions", req, auth("acme"))
    check("stream limit per tenant: the third stream gets 429 with Retry-After",
          st == 429 and body(text)["error"]["code"] == "too_many_streams"
          and hdr.get("Retry-After") == "1", (st, text[:300]))
    st, _, _ = http("POST", s.base + "/v1/completions",
                    {"prompt": "w0x6?w", "max_tokens": 2, "stream": True}, auth("degrader"))
    check("stream limit per tenant: another tenant still streams", st == 200)
    for c in hold:
        c.kill()
        c.wait()
    deadline = time.time() + 20
    st = 0
    while time.time() < deadline:  # the killed streams' slots come back once noticed
        st, _, _ = http("POST", s.base + "/v1/completions",
                        {"prompt": "w0x6?w", "max_tokens": 2, "stream": True}, auth("acme"))
        if st == 200:
            break
        time.sleep(0.2)
    check("stream limit per tenant: the slots are released when the streams end", st == 200, st)
    healthy_after(s, "stream limit", before, "rejected")


def invalid_reload(s, profile_path):
    _, before = metrics(s.base, ADMIN)
    with open(profile_path) as f:
        good = f.read()
    with open(profile_path, "w") as f:
        f.write(good[: len(good) // 2])  # truncated JSON
    st, _, text = http("POST", s.base + "/v1/profiles/reload", headers=ADMIN)
    check("reload of a truncated profile: 400 naming the file",
          st == 400 and "finance.json" in body(text)["error"]["message"], (st, text[:300]))
    st, _, text = http("POST", s.base + "/v1/completions",
                       {"prompt": "+4+8+2*3+3=", "max_tokens": 2, "profile": "finance",
                        "task_class": "market_analysis"}, auth("acme"))
    check("reload of a truncated profile: the old profile still serves", st == 200, text[:300])
    with open(profile_path, "w") as f:
        f.write(good)
    st, _, _ = http("POST", s.base + "/v1/profiles/reload", headers=ADMIN)
    check("reload of the repaired profile: 200", st == 200)
    _, after = metrics(s.base, ADMIN)
    check("reload: the server kept its counters",
          after.get("ponder_requests_total", 0) >= before.get("ponder_requests_total", 0))
    check("reload: the failed and the good reload counted",
          after.get("ponder_profile_reloads_total:error", 0)
          == before.get("ponder_profile_reloads_total:error", 0) + 1
          and after.get("ponder_profile_reloads_total:ok", 0)
          == before.get("ponder_profile_reloads_total:ok", 0) + 1, (before, after))


def checkpoint_replaced(s, model_dir):
    req = {"prompt": "+8*3*7+6+7+7+4+3+0+3+1=", "max_tokens": 6, "min_steps": 16,
           "max_steps": 16, "exit": "none"}
    st, _, text = http("POST", s.base + "/v1/completions", req, auth("acme"))
    want = body(text).get("choices", [{}])[0].get("text")
    weights = os.path.join(model_dir, "model.safetensors")
    with open(weights, "r+b") as f:  # overwritten in place: garbage, then truncated
        f.write(os.urandom(4096))
        f.truncate(1000)
    st2, _, text2 = http("POST", s.base + "/v1/completions", req, auth("acme"))
    check("checkpoint overwritten in place while serving: same output as before",
          st == 200 and st2 == 200 and body(text2)["choices"][0]["text"] == want,
          (want, text2[:300]))
    os.remove(weights)
    st3, _, text3 = http("POST", s.base + "/v1/completions", req, auth("acme"))
    check("checkpoint deleted while serving: same output as before",
          st3 == 200 and body(text3)["choices"][0]["text"] == want, text3[:300])


def main():
    t0 = time.time()
    os.makedirs(WORK, exist_ok=True)
    model_dir = os.path.join(WORK, "model")
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.copytree(os.path.join(SOURCE, "model", "zoo", "ponder-micro"), model_dir)
    profiles = []
    for name in ("finance.json", "chat.json"):
        dst = os.path.join(WORK, name)
        shutil.copyfile(os.path.join(SOURCE, "scenarios", "profiles", name), dst)
        profiles.append(dst)
    with open(profiles[0]) as f:
        fin = json.load(f)
    fin["tenants"]["degrader"] = {"budget": 1e-9, "window_seconds": 3600, "on_exhausted": "degrade"}
    fin["tenants"]["rejecter"] = {"budget": 1e-9, "window_seconds": 3600, "on_exhausted": "reject"}
    with open(profiles[0], "w") as f:
        json.dump(fin, f, indent=1)
    keys = os.path.join(WORK, "keys.json")
    with open(keys, "w") as f:
        json.dump(KEYS, f)
    s = harness.Server(PONDER, model_dir, WORK, "faults", "--profiles", ",".join(profiles),
                       "--api-keys", keys, "--admin-key", "admin-key", "--kv-budget-mb", "192",
                       "--max-active", "4", "--max-streams-per-tenant", "2")
    try:
        disconnect_mid_stream(s)
        deadline(s)
        budget(s)
        kv_admission(s)
        stream_limit(s)
        invalid_reload(s, profiles[0])
        checkpoint_replaced(s, model_dir)
    finally:
        rc = s.stop()
    harness.finish(rc, s, t0)


if __name__ == "__main__":
    main()
