"""Helpers of the end-to-end tests that drive `ponder serve`: start it on a free port, make
HTTP requests, record checks, read /metrics."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

passed, failed = 0, 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"[ OK ] {name}", flush=True)
    else:
        failed += 1
        print(f"[FAIL] {name} {str(detail)[:600]}", flush=True)


class Server:
    """`ponder serve --model MODEL --port 0 --threads 1 ARGS...`, its log in WORK; waits until
    /health answers 200 (the codes seen on the way are in health_codes)."""

    def __init__(self, ponder, model_dir, work, name, *args):
        self.log_path = os.path.join(work, f"server-{name}.log")
        self.log = open(self.log_path, "w+")
        cmd = [ponder, "serve", "--model", model_dir, "--port", "0", "--threads", "1", *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.base = None
        deadline = time.time() + 30
        while time.time() < deadline and self.base is None and self.proc.poll() is None:
            with open(self.log_path) as f:
                m = re.search(r"listening on (http://[0-9.]+:\d+)", f.read())
            if m:
                self.base = m.group(1)
            else:
                time.sleep(0.05)
        if self.base is None:
            raise RuntimeError(f"server {name} did not start: {self.tail()}")
        self.health_codes = set()
        while time.time() < deadline:
            st, _, body = http("GET", self.base + "/health")
            self.health_codes.add(st)
            if st == 200:
                break
            time.sleep(0.05)

    def tail(self):
        with open(self.log_path) as f:
            return f.read()[-2000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def http(method, url, body=None, headers=None, raw=None, timeout=60):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and not any(k.lower() == "content-type" for k in (headers or {})):
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()
    except (ConnectionError, urllib.error.URLError) as e:
        return 0, {}, str(e)


def metrics(base, headers=None):
    """Each metric summed over its series; also by outcome or exit reason ("name:value")."""
    st, _, text = http("GET", base + "/metrics", headers=headers)
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{([^}]*)\})? (\S+)$", line)
        if m:
            name, value = m.group(1), float(m.group(3))
            out[name] = out.get(name, 0) + value
            o = re.search(r'(?:outcome|reason)="(\w+)"', m.group(2) or "")
            if o:
                key = name + ":" + o.group(1)
                out[key] = out.get(key, 0) + value
    return st, out


def completed(m):
    return m.get("ponder_requests_total:stop", 0) + m.get("ponder_requests_total:length", 0)


def wait_idle(base, headers=None, timeout=10.0):
    """Waits until no request runs or waits and no KV is held; returns the last metrics."""
    deadline = time.time() + timeout
    while True:
        _, m = metrics(base, headers)
        idle = (m.get("ponder_num_requests_running") == 0 and m.get("ponder_num_requests_waiting") == 0
                and m.get("ponder_kv_cache_used_bytes") == 0
                and m.get("ponder_kv_cache_reserved_bytes") == 0)
        if idle or time.time() > deadline:
            return idle, m
        time.sleep(0.05)


def finish(server_rc, server, t0):
    """The server's exit status checked, the count printed, and exit 1 on any failure."""
    check("the server stops cleanly", server_rc == 0, server.tail())
    print(f"{passed} passed, {failed} failed ({time.time() - t0:.1f} s)")
    sys.exit(1 if failed else 0)
