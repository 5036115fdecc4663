"""Loopback load test of a running `imgsearch serve`: N concurrent clients, text and image queries.

    imgsearch serve sample_data --db /tmp/demo &
    python benchmarks/load_test.py --url http://127.0.0.1:7860/ --clients 16 --duration 60 [--rerank] [--json]

Each client loops until the time is up (or --max-requests in all): mostly text searches through
/search, and every Nth request an image query (upload, then /find_by_photo), through gradio's
plain REST API (POST /gradio_api/call/<api>, then read the event stream); ``--rerank`` turns the
UI's Rerank switch on for both. Reports throughput, p50/p90/p99/max latency per kind and overall,
and every error. Bounded in time and count; only talks to the URL given (meant for 127.0.0.1).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
QUERIES = ["a cat", "a cup of coffee", "two dogs playing in the snow", "a red flower", "a city street at night",
           "mountains and a lake", "a bird on a branch", "people at the beach", "a plate of food", "an old car",
           "a bridge over a river", "a child smiling", "a boat on the water", "trees in autumn", "a bicycle"]


@dataclass
class Sample:
    kind: str
    seconds: float
    error: str | None = None


@dataclass
class Results:
    samples: list[Sample] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, s: Sample) -> None:
        with self.lock:
            self.samples.append(s)


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


def _call(client: httpx.Client, api: str, data: list, timeout: float, session: str | None = None) -> dict | list:
    """One gradio REST call: submit, then read the event stream to its end."""
    body = {"data": data} if session is None else {"data": data, "session_hash": session}
    r = client.post(f"gradio_api/call/{api}", json=body, timeout=timeout)
    r.raise_for_status()
    event_id = r.json()["event_id"]
    event, payload = None, None
    with client.stream("GET", f"gradio_api/call/{api}/{event_id}", timeout=timeout) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                payload = line.split(":", 1)[1].strip()
                if event in ("complete", "error"):
                    break
    if event != "complete":
        raise RuntimeError(f"{api}: event {event!r}: {payload}")
    out = json.loads(payload)
    text = json.dumps(out)
    if "msg-error" in text:
        raise RuntimeError(f"{api}: error message in the reply: {text[:200]}")
    return out


def _client_loop(base: str, auth: tuple[str, str] | None, images: list[Path], image_every: int, deadline: float,
                 budget: "_Budget", results: Results, seed: int, timeout: float, rerank: bool = False) -> None:
    rng = random.Random(seed)
    session = f"loadtest-{seed}-{rng.getrandbits(48):012x}"  # one browser session per client, as in the UI
    with httpx.Client(base_url=base, timeout=timeout) as client:
        if auth:
            client.post("login", data={"username": auth[0], "password": auth[1]}).raise_for_status()
        n = 0
        while time.monotonic() < deadline and budget.take():
            n += 1
            kind = "image" if images and image_every and n % image_every == 0 else "text"
            t0 = time.perf_counter()
            try:
                if kind == "text":
                    _call(client, "search", [rng.choice(QUERIES), 12, 0, rerank, "", "", [], "relevance", "", 0],
                              timeout, session)
                else:
                    img = rng.choice(images)
                    with open(img, "rb") as f:
                        up = client.post("gradio_api/upload", files={"files": (img.name, f, "application/octet-stream")})
                    up.raise_for_status()
                    fd = {"path": up.json()[0], "orig_name": img.name, "meta": {"_type": "gradio.FileData"}}
                    _call(client, "find_by_photo", [fd, 8, rerank, ""], timeout, session)
                results.add(Sample(kind, time.perf_counter() - t0))
            except Exception as e:  # noqa: BLE001 - every failure is a counted error, the run goes on
                results.add(Sample(kind, time.perf_counter() - t0, f"{type(e).__name__}: {e}"[:300]))


class _Budget:
    def __init__(self, n: int | None) -> None:
        self.left = n
        self.lock = threading.Lock()

    def take(self) -> bool:
        if self.left is None:
            return True
        with self.lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True


def run_load(url: str, clients: int = 16, duration: float = 60.0, *, images: list[Path] | None = None,
             image_every: int = 4, max_requests: int | None = 100_000, auth: tuple[str, str] | None = None,
             timeout: float = 30.0, rerank: bool = False) -> dict:
    """Run the load; returns the report dict (what --json prints)."""
    base = url if url.endswith("/") else url + "/"
    images = list(images or [])
    results = Results()
    budget = _Budget(max_requests)
    deadline = time.monotonic() + duration
    t0 = time.perf_counter()
    threads = [threading.Thread(target=_client_loop, args=(base, auth, images, image_every, deadline, budget,
                                                          results, i, timeout, rerank), daemon=True)
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + timeout + 30)
    elapsed = time.perf_counter() - t0
    return {**_report(results.samples, elapsed, url, clients, duration), "rerank": rerank}


def _stats(samples: list[Sample], elapsed: float) -> dict:
    ok = [s.seconds for s in samples if s.error is None]
    return {
        "requests": len(samples),
        "ok": len(ok),
        "errors": len(samples) - len(ok),
        "throughput_rps": round(len(ok) / elapsed, 2) if elapsed else 0.0,
        "p50_ms": round(_percentile(ok, 50) * 1000, 1),
        "p90_ms": round(_percentile(ok, 90) * 1000, 1),
        "p99_ms": round(_percentile(ok, 99) * 1000, 1),
        "max_ms": round(max(ok) * 1000, 1) if ok else float("nan"),
        "mean_ms": round(statistics.fmean(ok) * 1000, 1) if ok else float("nan"),
    }


def _report(samples: list[Sample], elapsed: float, url: str, clients: int, duration: float) -> dict:
    errors: dict[str, int] = {}
    for s in samples:
        if s.error:
            errors[s.error] = errors.get(s.error, 0) + 1
    return {
        "url": url, "clients": clients, "duration_s": duration, "elapsed_s": round(elapsed, 1),
        "overall": _stats(samples, elapsed),
        "text": _stats([s for s in samples if s.kind == "text"], elapsed),
        "image": _stats([s for s in samples if s.kind == "image"], elapsed),
        "error_messages": sorted(errors.items(), key=lambda kv: -kv[1])[:10],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:7860/")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--max-requests", type=int, default=100_000, help="stop after this many requests in all")
    p.add_argument("--image-every", type=int, default=4, help="every Nth request of a client is an image query (0: none)")
    p.add_argument("--images", nargs="*", default=None,
                   help="query photos to upload (default: a few from sample_data/)")
    p.add_argument("--auth", default=None, metavar="USER:PASSWORD")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    p.add_argument("--rerank", action="store_true", help="every search and photo query with the Rerank switch on")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if args.clients < 1 or args.duration <= 0:
        p.error("--clients and --duration must be positive")
    images = [Path(i) for i in args.images] if args.images is not None else \
        sorted(p for p in (REPO / "sample_data").glob("*") if p.suffix.lower() in {".jpg", ".png", ".webp"})[:6]
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    try:
        httpx.get(args.url, timeout=10)
    except httpx.HTTPError as e:
        print(f"error: nothing answers at {args.url} ({e}); start `imgsearch serve` first", file=sys.stderr)
        return 1
    report = run_load(args.url, args.clients, args.duration, images=images, image_every=args.image_every,
                      max_requests=args.max_requests, auth=auth, timeout=args.timeout, rerank=args.rerank)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['clients']} clients for {report['elapsed_s']} s against {report['url']}"
              + (", reranked" if report["rerank"] else ""))
        print(f"{'':9}{'requests':>9}{'errors':>8}{'req/s':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}")
        for kind in ("text", "image", "overall"):
            s = report[kind]
            print(f"{kind:9}{s['requests']:>9}{s['errors']:>8}{s['throughput_rps']:>8}{s['p50_ms']:>9}"
                  f"{s['p90_ms']:>9}{s['p99_ms']:>9}{s['max_ms']:>9}")
        for msg, n in report["error_messages"]:
            print(f"  {n} × {msg}")
    return 0 if report["overall"]["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
