#!/usr/bin/env python3
"""Load test: many concurrent streaming clients against `ponder serve` on loopback.

usage: load_test.py PONDER_BINARY SOURCE_DIR WORK_DIR [--clients 64] [--duration 20]
                    [--max-active 16] [--max-queue 16]   (the server runs one engine thread)

Each client loops for --duration seconds: a streamed /v1/completions request drawn (seeded)
from the chat, education and finance scenario workloads, read to `data: [DONE]`; on 429 it
waits a fraction of Retry-After and tries again. The server's RSS is sampled every 0.25 s.
Checks: no unexpected outcome (anything but a complete stream or a 429 with Retry-After),
overload answered with 429, memory flat after warm-up (the peak over the last 60% of the run
at most 10% + 4 MiB above the RSS at the end of the first 40%), and the server idle with
its KV cache back to zero afterwards. Prints p50/p99 of time to first token and end-to-end
latency, and writes the figures to WORK_DIR/load_report.json.
"""
import argparse
import http.client
import json
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "apps"))
import harness  # noqa: E402
from harness import check, wait_idle  # noqa: E402


def percentile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def stream_once(host, port, body):
    """(outcome, ttft, e2e, retry_after): outcome 'ok', '429' or a description."""
    t0 = time.time()
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        conn.request("POST", "/v1/completions", json.dumps(body),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status == 429:
            retry = resp.getheader("Retry-After")
            resp.read()
            return ("429" if retry and retry.isdigit() else "429 without Retry-After",
                    None, None, float(retry or 1))
        if resp.status != 200:
            return f"HTTP {resp.status}: {resp.read()[:200]!r}", None, None, 0
        ttft, done = None, False
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if line.startswith(b"data: ") and ttft is None and b'"text"' in line:
                ttft = time.time() - t0
            if line == b"data: [DONE]":
                done = True
                break
            if line.startswith(b'data: {"error"'):
                return f"error event: {line[:200]!r}", None, None, 0
        if not done:
            return "stream ended without [DONE]", None, None, 0
        return "ok", ttft, time.time() - t0, 0
    except (OSError, http.client.HTTPException) as e:
        return f"{type(e).__name__}: {e}", None, None, 0
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ponder")
    ap.add_argument("source")
    ap.add_argument("work")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--max-active", type=int, default=16)
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    items = []
    for name in ("chat", "education", "finance"):
        with open(os.path.join(a.source, "scenarios", "workloads", name + ".jsonl")) as f:
            for line in f:
                if line.strip():
                    item = json.loads(line)
                    items.append({"prompt": item["prompt"], "profile": name,
                                  "task_class": item["class"], "max_tokens": 8, "stream": True})
    profiles = [os.path.join(a.source, "scenarios", "profiles", n + ".json")
                for n in ("finance", "education", "chat")]
    s = harness.Server(a.ponder, os.path.join(a.source, "model", "zoo", "ponder-micro"), a.work,
                       "load", "--profiles", ",".join(profiles), "--max-active",
                       str(a.max_active), "--max-queue", str(a.max_queue), "--http-threads",
                       str(a.clients + 16))
    host, port = s.base.split("://", 1)[1].split(":")
    port = int(port)
    lock = threading.Lock()
    outcomes, ttfts, e2es = {}, [], []
    stop_at = time.time() + a.duration
    rss = []

    def client(k):
        rng = random.Random(a.seed * 1000 + k)
        while time.time() < stop_at:
            body = dict(rng.choice(items))
            outcome, ttft, e2e, retry = stream_once(host, port, body)
            with lock:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                if outcome == "ok":
                    e2es.append(e2e)
                    if ttft is not None:
                        ttfts.append(ttft)
            if outcome.startswith("429"):
                time.sleep(retry * rng.uniform(0.05, 0.3))

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(a.clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        rss.append((time.time() - t0, rss_bytes(s.proc.pid)))
        time.sleep(0.25)
    for t in threads:
        t.join()
    wall = time.time() - t0
    idle, m = wait_idle(s.base, timeout=30)
    rc = s.stop()

    warm = [r for t, r in rss if t <= 0.4 * a.duration]
    late = [r for t, r in rss if t > 0.4 * a.duration]
    base = warm[-1] if warm else 0
    peak_late = max(late) if late else 0
    ok = outcomes.get("ok", 0)
    unexpected = {k: v for k, v in outcomes.items() if k not in ("ok", "429")}
    report = {
        "clients": a.clients, "duration_s": a.duration, "wall_s": round(wall, 2),
        "max_active": a.max_active, "max_queue": a.max_queue,
        "completed": ok, "rejected_429": outcomes.get("429", 0), "unexpected": unexpected,
        "completed_per_s": round(ok / wall, 2),
        "ttft_p50_s": percentile(ttfts, 0.5), "ttft_p99_s": percentile(ttfts, 0.99),
        "e2e_p50_s": percentile(e2es, 0.5), "e2e_p99_s": percentile(e2es, 0.99),
        "rss_start_mib": round(rss[0][1] / 2**20, 1) if rss else None,
        "rss_after_warmup_mib": round(base / 2**20, 1),
        "rss_peak_after_warmup_mib": round(peak_late / 2**20, 1),
        "rss_end_mib": round(rss[-1][1] / 2**20, 1) if rss else None,
    }
    with open(os.path.join(a.work, "load_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))
    check(f"{ok} streams completed", ok > 0)
    check("no unexpected errors", not unexpected, unexpected)
    check("overload answered with 429 (with Retry-After)", outcomes.get("429", 0) > 0, outcomes)
    check("memory flat after warm-up (peak within 10% + 4 MiB of the RSS after warm-up)",
          base > 0 and peak_late <= base * 1.10 + 4 * 2**20, (base, peak_late))
    check("idle afterwards: nothing running or waiting, KV back to 0", idle, m)
    check("server stops cleanly", rc == 0, s.tail())
    print(f"{harness.passed} passed, {harness.failed} failed")
    sys.exit(1 if harness.failed else 0)


if __name__ == "__main__":
    main()
