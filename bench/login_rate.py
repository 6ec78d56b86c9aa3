#!/usr/bin/env python3
"""Login rate one core sustains at the configured Argon2 cost.

Starts `printworks serve` (release build) pinned to CPU 0 against its own database,
signs up one account per worker, then has WORKERS threads on the other CPU log in as
fast as they can for SECONDS, over keep-alive HTTP. Prints logins per second and
latency percentiles. Run through `make bench-login`.
"""

import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

ADDR = os.environ.get("BENCH_ADDR", "127.0.0.1:18181")
WORKERS = int(os.environ.get("BENCH_WORKERS", "8"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "20"))
PASSWORD = "violet-lantern 93 orbit quince"
BIN = os.environ.get("BENCH_BIN", "target/release/printworks")


def request(conn, method, path, body=None):
    headers = {"content-type": "application/json"} if body is not None else {}
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    res = conn.getresponse()
    res.read()
    return res.status


def main():
    database_url = os.environ["DATABASE_URL"]
    data_dir = tempfile.mkdtemp(prefix="printworks-bench-")
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": database_url,
        "PRINTWORKS_DATA_DIR": data_dir,
        "PRINTWORKS_HTTP_ADDR": ADDR,
        "PRINTWORKS_PUBLIC_URL": f"http://{ADDR}",
        "PRINTWORKS_AUTH_RATE_LIMIT": "1000000",
        "PRINTWORKS_LOG": "warn",
    })
    server = subprocess.Popen(["taskset", "-c", "0", BIN, "serve"], env=env)
    try:
        host, port = ADDR.split(":")
        for _ in range(200):
            try:
                c = http.client.HTTPConnection(host, int(port), timeout=2)
                if request(c, "GET", "/readyz") == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            sys.exit("server did not become ready")

        suffix = str(int(time.time()))
        emails = [f"bench{i}-{suffix}@example.com" for i in range(WORKERS)]
        c = http.client.HTTPConnection(host, int(port))
        for e in emails:
            assert request(c, "POST", "/account/v1/users",
                           {"email": e, "password": PASSWORD, "display_name": "Bench"}) == 201

        latencies = []
        failures = [0]
        lock = threading.Lock()
        deadline = time.monotonic() + SECONDS

        def worker(email):
            os.sched_setaffinity(0, {1} if os.cpu_count() > 1 else {0})
            conn = http.client.HTTPConnection(host, int(port))
            mine = []
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                status = request(conn, "POST", "/account/v1/sessions",
                                 {"email": email, "password": PASSWORD})
                if status == 201:
                    mine.append(time.monotonic() - t0)
                else:
                    with lock:
                        failures[0] += 1
            with lock:
                latencies.extend(mine)

        started = time.monotonic()
        threads = [threading.Thread(target=worker, args=(e,)) for e in emails]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        latencies.sort()

        def pct(p):
            return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

        print(f"logins: {len(latencies)} in {elapsed:.1f} s with {WORKERS} clients, server on 1 CPU")
        print(f"rate: {len(latencies) / elapsed:.1f} logins/s; failures: {failures[0]}")
        print(f"latency ms: p50 {pct(50):.0f}, p90 {pct(90):.0f}, p99 {pct(99):.0f}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
