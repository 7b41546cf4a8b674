"""nmt-serve under load: N concurrent clients on 127.0.0.1, each sending one test sentence per
request for a bounded time; latency percentiles, sentences/s, and the server's memory.

    python benchmarks/serve_load.py runs/multi30k_de_en                      # 1, 8, 32 clients
    python benchmarks/serve_load.py RUN_DIR --clients 32 --seconds 60 --beam 5 --threads 2
    python benchmarks/serve_load.py RUN_DIR --quantize int8 --shortlist 10   # nmt-serve's flags

The server is started here (`nmt-serve --port 0`), warmed up, and stopped with SIGTERM at the
end. Compare sentences/s with `benchmarks/decode_speed.py`'s batch figure for the same settings
on the same machine. Memory is the server's resident set: at the start and end of each level,
and its peak over the whole run (VmHWM). CPU is each process's share of one core: the clients
run on the same machine and take their part of it. The last line printed is a one-line summary.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--src", type=Path, help="sentences to send (default: the run's split)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=30.0, help="per number of clients")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="the server's CPU threads")
    args, server_flags = parser.parse_known_args()  # the other flags are nmt-serve's
    sentences = test_sentences(args)
    server = subprocess.Popen(
        [sys.executable, "-m", "nmt", "serve", "-m", str(args.run_dir), "--port", "0",
         "--threads", str(args.threads), "--beam", str(args.beam), *server_flags],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert server.stderr is not None
    port = 0
    for line in server.stderr:
        found = re.search(r"serving on http://.+:(\d+)/", line)
        if found:
            port = int(found[1])
            break
    if not port:
        sys.exit("nmt-serve did not start")
    threading.Thread(target=server.stderr.read, daemon=True).start()  # keep its pipe drained
    try:
        for i in range(20):  # warm-up: allocator, first batches
            request(connect(port), sentences[i : i + 1])
        print(f"nmt-serve pid {server.pid}, beam {args.beam}, {args.threads} threads, "
              f"{len(sentences)} test sentences, {args.seconds:.0f} s per level")  # fmt: skip
        print(
            "| clients | requests | sentences/s | p50 ms | p95 ms | RSS start → end MiB "
            "| server CPU | client CPU |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        summary = []
        for clients in args.clients:
            start_rss, server_cpu = memory(server.pid, "VmRSS"), cpu_seconds(server.pid)
            client_cpu, began = time.process_time(), time.monotonic()
            latencies = load(port, sentences, clients, args.seconds)
            wall = time.monotonic() - began
            client_cpu = (time.process_time() - client_cpu) / wall
            server_cpu = (cpu_seconds(server.pid) - server_cpu) / wall
            end_rss = memory(server.pid, "VmRSS")
            rate = len(latencies) / args.seconds
            p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
            print(f"| {clients} | {len(latencies)} | {rate:.1f} | {p50:.1f} | {p95:.1f} | "
                  f"{start_rss:.0f} → {end_rss:.0f} | {server_cpu:.0%} | {client_cpu:.0%} |")  # fmt: skip
            summary.append(f"{clients} clients {rate:.1f} sent/s p50 {p50:.0f} ms")
        peak = memory(server.pid, "VmHWM")
        print(f"server peak memory {peak:.0f} MiB")
        print("summary: " + "; ".join(summary) + f"; peak {peak:.0f} MiB")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)


def test_sentences(args: argparse.Namespace) -> list[str]:
    if args.src:
        path = args.src
    else:
        data = yaml.safe_load((args.run_dir / "recipe.yaml").read_text(encoding="utf-8"))["data"]
        path = Path(data["root"]) / f"{args.split}.{data['src_lang']}"
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def connect(port: int) -> http.client.HTTPConnection:
    """A kept-alive connection with Nagle's algorithm off, as curl, urllib3 and httpx set it:
    http.client sends the headers and the body in two writes, and with Nagle on, the body waits
    for the server's delayed ACK of the headers (40 ms on Linux)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.connect()
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def request(connection: http.client.HTTPConnection, lines: list[str]) -> None:
    body = json.dumps({"text": lines}).encode()
    connection.request("POST", "/translate", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {answer[:200]!r}")


def load(port: int, sentences: list[str], clients: int, seconds: float) -> list[float]:
    """Each client sends the next sentence as soon as its last answer came, over one kept-alive
    connection, until the time is up; the latencies in milliseconds of every answered request."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(number: int) -> None:
        connection = connect(port)
        index, mine = number * 37, []
        while time.monotonic() < deadline:
            began = time.perf_counter()
            request(connection, [sentences[index % len(sentences)]])
            mine.append((time.perf_counter() - began) * 1000)
            index += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def percentile(values: list[float], p: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]
        if len(values) > 1
        else values[0]
    )


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory(pid: int, field: str) -> float:
    """A field of /proc/PID/status in MiB (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status)[1]) / 1024  # type: ignore[index]


if __name__ == "__main__":
    main()
