#!/usr/bin/env python3
"""The dashboard against a real Prometheus scraping a running `ponder serve`.

usage: prometheus_test.py PONDER_BINARY SOURCE_DIR WORK_DIR

1. `promtool check config` on the shipped telemetry/prometheus.yml.
2. Starts `ponder serve` on the bundled model (port 0) and Debian's `prometheus` on loopback
   scraping it every second (its config is the shipped one with the target and interval
   changed, checked by promtool too).
3. Replays a small workload: the first requests of the finance and education scenario
   workloads, several tenants (one with a budget, one without), four at a time, some
   streamed.
4. Once Prometheus has seen every request, evaluates every PromQL expression of
   telemetry/grafana/ponder.json (panels in rows included, template variables substituted:
   $model_name, $profile and $task_class as all values, $__rate_interval = 1m,
   $__range = 5m) and every template variable's label query through the HTTP API, and
   fails on any error or empty result.
Exits 77 (skipped) only where prometheus or promtool is not installed.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "apps"))
import harness  # noqa: E402
from harness import check, http  # noqa: E402

PONDER, SOURCE, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
MODEL_DIR = os.path.join(SOURCE, "model", "zoo", "ponder-micro")
PROFILES = [os.path.join(SOURCE, "scenarios", "profiles", n)
            for n in ("finance.json", "education.json", "chat.json")]
DASHBOARD = os.path.join(SOURCE, "telemetry", "grafana", "ponder.json")
SCRAPE_CONFIG = os.path.join(SOURCE, "telemetry", "prometheus.yml")
MODEL = "ponder-micro"
PER_PROFILE = 12
VARIABLES = {"$model_name": MODEL, "$profile": ".*", "$task_class": ".*",
             "$__rate_interval": "1m", "$__range": "5m"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expressions(panels):
    """(panel title, expr) of every target, rows' nested panels included."""
    out = []
    for p in panels:
        out += expressions(p.get("panels", []))
        for t in p.get("targets") or []:
            if t.get("expr"):
                out.append((p.get("title", "?"), t["expr"]))
    return out


def substitute(expr):
    for k in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(k, VARIABLES[k])
    return expr


def query(prom, expr):
    url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    st, _, body = http("GET", url, timeout=30)
    try:
        return st, json.loads(body)
    except ValueError:
        return st, {"status": "error", "error": body[:300]}


def replay(base):
    items = []
    for profile in ("finance", "education"):
        with open(os.path.join(SOURCE, "scenarios", "workloads", profile + ".jsonl")) as f:
            lines = [json.loads(x) for x in f if x.strip()][:PER_PROFILE]
        tenants = {"finance": ["acme", "default", "walk-in"],
                   "education": ["district-42", "default", "walk-in"]}[profile]
        for i, item in enumerate(lines):
            items.append({"prompt": item["prompt"], "profile": profile,
                          "task_class": item["class"], "tenant": tenants[i % 3],
                          "max_tokens": 8, "stream": i % 4 == 0})
    codes = []
    lock = threading.Lock()

    def worker(chunk):
        for body in chunk:
            st, _, text = http("POST", base + "/v1/completions", body)
            with lock:
                codes.append((st, text[:200]))

    threads = [threading.Thread(target=worker, args=(items[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(items), codes


def main():
    promtool, prometheus = shutil.which("promtool"), shutil.which("prometheus")
    if not promtool or not prometheus:
        print("SKIPPED: prometheus/promtool not installed (Debian package prometheus)")
        sys.exit(77)
    os.makedirs(WORK, exist_ok=True)
    t0 = time.time()
    p = subprocess.run([promtool, "check", "config", SCRAPE_CONFIG], capture_output=True, text=True)
    check("promtool check config telemetry/prometheus.yml", p.returncode == 0, p.stdout + p.stderr)

    server = harness.Server(PONDER, MODEL_DIR, WORK, "prometheus", "--profiles", ",".join(PROFILES),
                            "--max-active", "4")
    prom_proc = None
    try:
        target = server.base.split("://", 1)[1]
        with open(SCRAPE_CONFIG) as f:
            config = f.read()
        config = config.replace("127.0.0.1:8000", target).replace("scrape_interval: 15s",
                                                                    "scrape_interval: 1s")
        config_path = os.path.join(WORK, "prometheus.yml")
        with open(config_path, "w") as f:
            f.write(config)
        p = subprocess.run([promtool, "check", "config", config_path], capture_output=True,
                           text=True)
        check("promtool check config (test copy)", p.returncode == 0, p.stdout + p.stderr)
        port = free_port()
        prom = f"http://127.0.0.1:{port}"
        tsdb = os.path.join(WORK, "tsdb")
        shutil.rmtree(tsdb, ignore_errors=True)
        prom_log = open(os.path.join(WORK, "prometheus.log"), "w")
        prom_proc = subprocess.Popen(
            [prometheus, "--config.file=" + config_path, "--storage.tsdb.path=" + tsdb,
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=prom_log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline and http("GET", prom + "/-/ready", timeout=2)[0] != 200:
            time.sleep(0.2)
        check("prometheus ready on loopback", http("GET", prom + "/-/ready")[0] == 200)
        # The target is up before the traffic starts.
        while time.time() < deadline:
            _, r = query(prom, 'up{job="ponder"}')
            if r.get("data", {}).get("result") and r["data"]["result"][0]["value"][1] == "1":
                break
            time.sleep(0.5)

        n, codes = replay(server.base)
        check(f"workload replayed: {n} requests answered 200",
              len(codes) == n and all(c == 200 for c, _ in codes),
              [c for c in codes if c[0] != 200][:3])
        # Prometheus has scraped the end of the replay, then a few more samples for rates.
        want = f'sum(ponder_requests_total{{model_name="{MODEL}"}})'
        seen = None
        while time.time() < deadline + 60:
            _, r = query(prom, want)
            res = r.get("data", {}).get("result", [])
            seen = float(res[0]["value"][1]) if res else None
            if seen == n:
                break
            time.sleep(0.5)
        check("prometheus scraped every request", seen == n, (seen, n))
        time.sleep(3)

        with open(DASHBOARD) as f:
            dash = json.load(f)
        exprs = expressions(dash["panels"])
        check("dashboard has expressions", len(exprs) >= 20, len(exprs))
        for title, expr in exprs:
            q = substitute(expr)
            st, r = query(prom, q)
            ok = st == 200 and r.get("status") == "success"
            result = r.get("data", {}).get("result", []) if ok else []
            check(f"{title}: {q[:110]}", ok and len(result) > 0,
                  r.get("error", "empty result") if ok or r.get("error") else (st, r))
        # Template variables: label_values(selector, label) must list something.
        for var in dash["templating"]["list"]:
            if var.get("type") != "query":
                continue
            m = re.match(r"label_values\((.*),\s*(\w+)\)$", var["definition"])
            check(f"variable {var['name']} is label_values(...)", m is not None, var["definition"])
            if m:
                q = substitute(f"count by ({m.group(2)}) ({m.group(1)})")
                st, r = query(prom, q)
                check(f"variable {var['name']}: {q}",
                      st == 200 and r.get("status") == "success" and r["data"]["result"], r)
        ds = [v for v in dash["templating"]["list"] if v.get("type") == "datasource"]
        check("one datasource variable named datasource, no __inputs",
              len(ds) == 1 and ds[0]["name"] == "datasource" and "__inputs" not in dash)
        missing = [p.get("title") for p in dash["panels"] if p.get("type") != "row" and (
            not p.get("description") or not p.get("fieldConfig", {}).get("defaults", {}).get("unit"))]
        check("every panel has a description and a unit", not missing, missing)
    finally:
        if prom_proc is not None:
            prom_proc.terminate()
            try:
                prom_proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                prom_proc.kill()
        rc = server.stop()
    harness.finish(rc, server, t0)


if __name__ == "__main__":
    main()
