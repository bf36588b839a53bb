"""Latency through the local front end against the revision directly.

`python -m benchmarks.frontend [--rate 100] [--seconds 5]` deploys one tiny service with
the real `LocalDeployer` (so the real front end process), then sends GETs at a fixed
rate, rotating between the stable URL (front end -> revision), the revision's own port and
a front end port with no revision (the front end answers 503 itself: its own cost, without
the hop to the revision), each on a new connection, and prints p50/p99 of each and the
p50 ratio against the 1.3x target. Everything started is stopped at the end.
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


ALONE = "fe alone"  # the front end answering by itself (503: no revision)


def _get_ms(host: str, port: int, expected: int = 200) -> float:
    start = time.perf_counter()
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        if response.status != expected:
            raise RuntimeError(f"GET {host}:{port} answered {response.status}")
    finally:
        connection.close()
    return (time.perf_counter() - start) * 1000


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(urls: dict[str, str], rate: float, seconds: float) -> dict[str, list[float]]:
    """Rotate requests over `urls` at `rate` per second (all together)."""
    targets = {name: urlsplit(url) for name, url in urls.items()}
    samples: dict[str, list[float]] = {name: [] for name in targets}
    names = list(targets)

    def get(name: str) -> float:
        url = targets[name]
        return _get_ms(url.hostname or "127.0.0.1", url.port or 80, 503 if name == ALONE else 200)

    for name in names:  # warm every path
        get(name)
    interval = 1.0 / rate
    due = time.perf_counter()
    for i in range(int(rate * seconds)):
        name = names[i % len(names)]
        samples[name].append(get(name))
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
            alone = deployer.gateway.port_for("bench#alone")
            deployer.gateway.serve("bench#alone", "alone", {alone: {"tag": "", "backends": []}})
            urls = {"front end": stable, "direct": direct, ALONE: deployer.gateway.url(alone)}
            samples = measure(urls, args.rate, args.seconds)
        finally:
            deployer.teardown_all()
    print(f"{args.rate:g} requests/s for {args.seconds:g} s, rotating, new connection each")
    print(f"{'path':<10} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name, values in samples.items():
        p50, p99 = _percentile(values, 0.5), _percentile(values, 0.99)
        mean = statistics.fmean(values)
        print(f"{name:<10} {len(values):>5} {p50:>8.2f} {p99:>8.2f} {mean:>8.2f}")
    ratio = _percentile(samples["front end"], 0.5) / _percentile(samples["direct"], 0.5)
    ratio99 = _percentile(samples["front end"], 0.99) / _percentile(samples["direct"], 0.99)
    verdict = "within" if ratio <= TARGET_P50_RATIO else "ABOVE"
    print(f"p50 ratio {ratio:.2f}x ({verdict} the {TARGET_P50_RATIO}x target); p99 {ratio99:.2f}x")
    alone = _percentile(samples[ALONE], 0.5) / _percentile(samples["direct"], 0.5)
    print(
        f"the front end answering by itself: p50 {_percentile(samples[ALONE], 0.5):.2f} ms"
        f" ({alone:.2f}x direct); a request through it pays that and the revision's own time"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
