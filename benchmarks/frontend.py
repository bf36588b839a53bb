"""Latency through the local front end against the revision directly.

`python -m benchmarks.frontend [--rate 100] [--seconds 5]` deploys one tiny service with
the real `LocalDeployer` (so the real front end process), then sends GETs at a fixed
rate, alternating between the stable URL (front end -> revision) and the revision's own
port, each on a new connection, and prints p50/p99 of each and the p50 ratio against the
1.3x target. Everything started is stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from shared.adapters.local.deployer import LocalDeployer
from shared.architecture.model import DeploymentSpec

TARGET_P50_RATIO = 1.3

SERVICE = """\
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps connections alive, as real servers do
    disable_nagle_algorithm = True  # as real servers do: no 40 ms delayed-ACK stall

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def _get_ms(host: str, port: int) -> float:
    start = time.perf_counter()
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {host}:{port} answered {response.status}")
    finally:
        connection.close()
    return (time.perf_counter() - start) * 1000


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(stable: str, direct: str, rate: float, seconds: float) -> dict[str, list[float]]:
    """Alternate requests to `stable` and `direct` at `rate` per second (both together)."""
    targets = {"front end": urlsplit(stable), "direct": urlsplit(direct)}
    samples: dict[str, list[float]] = {name: [] for name in targets}
    for url in targets.values():  # warm both paths
        _get_ms(url.hostname or "127.0.0.1", url.port or 80)
    interval = 1.0 / rate
    due = time.perf_counter()
    for i in range(int(rate * seconds)):
        name = "front end" if i % 2 == 0 else "direct"
        url = targets[name]
        samples[name].append(_get_ms(url.hostname or "127.0.0.1", url.port or 80))
        due += interval
        time.sleep(max(0.0, due - time.perf_counter()))
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "svc"
        source.mkdir()
        (source / "main.py").write_text(SERVICE)
        deployer = LocalDeployer(Path(tmp) / "state")
        try:
            stable = deployer.build_and_deploy("bench", "", DeploymentSpec(source_path=str(source)))
            direct = str(deployer.running()["bench"]["revision_url"])
            samples = measure(stable, direct, args.rate, args.seconds)
        finally:
            deployer.teardown_all()
    print(f"{args.rate:g} requests/s for {args.seconds:g} s, alternating, new connection each")
    print(f"{'path':<10} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name, values in samples.items():
        p50, p99 = _percentile(values, 0.5), _percentile(values, 0.99)
        mean = statistics.fmean(values)
        print(f"{name:<10} {len(values):>5} {p50:>8.2f} {p99:>8.2f} {mean:>8.2f}")
    ratio = _percentile(samples["front end"], 0.5) / _percentile(samples["direct"], 0.5)
    ratio99 = _percentile(samples["front end"], 0.99) / _percentile(samples["direct"], 0.99)
    verdict = "within" if ratio <= TARGET_P50_RATIO else "ABOVE"
    print(f"p50 ratio {ratio:.2f}x ({verdict} the {TARGET_P50_RATIO}x target); p99 {ratio99:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
