#!/usr/bin/env python3
"""Overload and soak runs against a kr-serve it starts (issue 22, must-shows 2 and 3).

  overload: CONCURRENCY clients (default 10 x the server's admitted concurrency,
            max_running + max_queue) send streamed and whole chat requests back to back
            for DURATION seconds. Every admitted request must complete (a finish reason,
            or `[DONE]`) or end with a clean JSON error; every refusal must be a 429 with
            Retry-After; afterwards no KV block may stay in use.
  soak:     mixed traffic for DURATION seconds: streams, streams cancelled mid-way, bad
            bodies (400 expected), n>1, long prompts, embeddings-free chat and completions;
            every INTERVAL seconds it records the server's RSS, open fds, threads, KV blocks
            in use and the latency of the requests that ended in the interval. The server's
            log is checked for panics at the end.

Writes OUT/report.json (machine, commit, command, settings, samples, verdict) and, for the
soak, OUT/soak.svg (the series over time). Exit status 1 when a check fails.

Usage (from the repository root, after `cargo build --release -p kr-serve`):
  target/pyclients/bin/python scripts/load_test.py overload --duration 60 --out reports/overload
  target/pyclients/bin/python scripts/load_test.py soak --duration 1800 --out reports/soak
A 24-hour soak: --duration 86400 --interval 60 (the report keeps every sample).
Needs httpx (installed with the openai package in target/pyclients).
"""
import argparse
import asyncio
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import time

import httpx

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DEFAULT_MODEL = os.path.join(ROOT, "..", "shared", "models", "smollm2-135m-instruct-q4_1",
                             "SmolLM2-135M-Instruct.Q4_1.gguf")
WORDS = ("river stone light window garden paper music winter table orange cloud voice "
         "silver market forest letter engine bridge candle harbor").split()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, log):
    port = free_port()
    cmd = [args.binary, "serve", "--model", args.model, "--port", str(port),
           "--max-running", str(args.max_running), "--max-queue", str(args.max_queue),
           "--kv-cache-mib", str(args.kv_cache_mib)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(base + "/ready", timeout=1).status_code == 200:
                return proc, base, cmd
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}; see {log.name}")
        time.sleep(0.1)
    sys.exit("the server did not become ready")


def proc_stats(pid):
    status = open(f"/proc/{pid}/status").read()
    field = lambda k: int(re.search(rf"^{k}:\s+(\d+)", status, re.M).group(1))
    return {"rss_mib": round(field("VmRSS") / 1024, 1), "threads": field("Threads"),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def metric(page, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", page, re.M)
    return float(m.group(1)) if m else None


class Tally:
    """Outcomes and latencies of the requests that ended since the last sample."""

    def __init__(self):
        self.outcomes, self.latencies, self.problems = {}, [], []
        self.total = {}

    def count(self, what, latency=None):
        self.outcomes[what] = self.outcomes.get(what, 0) + 1
        self.total[what] = self.total.get(what, 0) + 1
        if latency is not None:
            self.latencies.append(latency)

    def problem(self, text):
        self.count("problem")
        if len(self.problems) < 50:
            self.problems.append(text)

    def take(self):
        out, lat = self.outcomes, sorted(self.latencies)
        self.outcomes, self.latencies = {}, []
        pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None
        return {"outcomes": out, "p50_s": pct(0.5), "p99_s": pct(0.99)}


def prompt(rng, words):
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def check_error(r, tally, kind):
    """A non-200 answer: a 429 needs Retry-After; any error needs a JSON body."""
    body = await r.aread()
    try:
        err = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return tally.problem(f"{kind}: status {r.status_code} without a JSON error: {body[:200]!r}")
    if r.status_code == 429:
        if "retry-after" not in r.headers:
            return tally.problem(f"{kind}: 429 without Retry-After")
        return tally.count("refused_429")
    tally.count(f"error_{r.status_code}")
    return err


async def stream_chat(client, base, body, tally, cancel_after=None):
    t0 = time.monotonic()
    async with client.stream("POST", base + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return await check_error(r, tally, "stream")
        chunks, done, finished = 0, False, False
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            ev = json.loads(data)
            if "error" in ev:
                tally.count("stream_error_event")
                return
            chunks += 1
            finished |= any(c.get("finish_reason") for c in ev.get("choices", []))
            if cancel_after is not None and chunks >= cancel_after:
                tally.count("cancelled")
                return
        if done and finished:
            tally.count("ok", time.monotonic() - t0)
        else:
            tally.problem(f"stream ended without finish/[DONE] after {chunks} chunks")


async def whole(client, base, path, body, tally, expect=200):
    t0 = time.monotonic()
    r = await client.post(base + path, json=body)
    if r.status_code == expect == 200:
        choices = r.json().get("choices", [])
        if choices and all(c.get("finish_reason") for c in choices):
            return tally.count("ok", time.monotonic() - t0)
        return tally.problem(f"200 without finish reasons: {r.text[:200]}")
    if r.status_code == expect:
        return tally.count(f"expected_{expect}")
    await check_error(r, tally, path)


async def one_request(client, base, rng, mix, tally, model):
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    chat = lambda words, **kw: {"model": model, "messages": [
        {"role": "user", "content": prompt(rng, words)}], "max_tokens": rng.randint(8, 48), **kw}
    if kind == "stream":
        await stream_chat(client, base, chat(12, stream=True), tally)
    elif kind == "cancel":
        await stream_chat(client, base, chat(12, stream=True, max_tokens=200), tally,
                          cancel_after=rng.randint(1, 8))
    elif kind == "whole":
        await whole(client, base, "/v1/chat/completions", chat(12), tally)
    elif kind == "n":
        await whole(client, base, "/v1/chat/completions", chat(8, n=3, temperature=0.8), tally)
    elif kind == "long":
        await whole(client, base, "/v1/completions",
                    {"model": model, "prompt": prompt(rng, 900), "max_tokens": 16}, tally)
    elif kind == "bad":
        bad = rng.choice([{"model": model, "messages": "nope"},
                          {"model": model, "messages": [{"role": "user", "content": "x"}],
                           "temperature": 9},
                          {"model": model, "prompt": "x", "max_tokens": -1}])
        path = "/v1/completions" if "prompt" in bad else "/v1/chat/completions"
        await whole(client, base, path, bad, tally, expect=400)


async def client_loop(base, seed, mix, tally, until, model):
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        while time.monotonic() < until:
            try:
                await one_request(client, base, rng, mix, tally, model)
            except httpx.HTTPError as e:
                tally.problem(f"transport: {type(e).__name__}: {e}")


async def sampler(base, pid, tally, until, interval, samples, t0):
    async with httpx.AsyncClient(timeout=30) as client:
        while time.monotonic() < until:
            await asyncio.sleep(interval)
            page = (await client.get(base + "/metrics")).text
            s = {"t_s": round(time.monotonic() - t0, 1), **proc_stats(pid),
                 "kv_blocks_used": metric(page, "kr_kv_blocks_used"),
                 "running": metric(page, "kr_requests_running"),
                 "waiting": metric(page, "kr_requests_waiting"), **tally.take()}
            samples.append(s)
            print(json.dumps(s), flush=True)


async def run(args, base, pid, model):
    mix = ({"stream": 1, "whole": 1} if args.mode == "overload" else
           {"stream": 4, "cancel": 2, "whole": 2, "n": 1, "long": 1, "bad": 1})
    tally, samples = Tally(), []
    t0 = time.monotonic()
    until = t0 + args.duration
    clients = [client_loop(base, i, mix, tally, until, model) for i in range(args.concurrency)]
    await asyncio.gather(sampler(base, pid, tally, until, args.interval, samples, t0), *clients)
    return tally, samples


def settle(base):
    """Waits for the engine to drain; the final KV blocks in use and running count."""
    for _ in range(100):
        page = httpx.get(base + "/metrics", timeout=10).text
        used, running = metric(page, "kr_kv_blocks_used"), metric(page, "kr_requests_running")
        if used == 0 and running == 0:
            break
        time.sleep(0.1)
    return used, running


def flat(samples, key, skip=0.2):
    """First and last thirds of a series (after a warm-up share) and their growth."""
    vals = [s[key] for s in samples[int(len(samples) * skip):] if s.get(key) is not None]
    if len(vals) < 3:
        return None
    third = max(1, len(vals) // 3)
    a, b = statistics.mean(vals[:third]), statistics.mean(vals[-third:])
    return {"first_third_mean": round(a, 2), "last_third_mean": round(b, 2),
            "min": min(vals), "max": max(vals)}


def svg(samples, path):
    """The soak's series on one page (no plotting library needed)."""
    series = [("rss_mib", "RSS MiB"), ("fds", "open fds"), ("threads", "threads"),
              ("kv_blocks_used", "KV blocks in use"), ("p99_s", "p99 latency s")]
    w, h, pad = 900, 150, 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h * len(series)}" '
             'font-family="sans-serif" font-size="12">']
    tmax = max(s["t_s"] for s in samples) or 1
    for i, (key, label) in enumerate(series):
        pts = [(s["t_s"], s[key]) for s in samples if s.get(key) is not None]
        y0 = i * h
        vmax = max((v for _, v in pts), default=1) or 1
        coords = " ".join(f"{pad + (t / tmax) * (w - 2 * pad):.1f},"
                          f"{y0 + h - pad / 2 - (v / vmax) * (h - pad):.1f}" for t, v in pts)
        parts.append(f'<text x="{pad}" y="{y0 + 14}">{label} (max {vmax:g}; x: 0..{tmax:.0f} s)</text>')
        parts.append(f'<line x1="{pad}" y1="{y0 + h - pad / 2}" x2="{w - pad}" y2="{y0 + h - pad / 2}" stroke="#999"/>')
        parts.append(f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{coords}"/>')
    parts.append("</svg>")
    open(path, "w").write("\n".join(parts))


def verdict(args, tally, samples, final, log_path):
    used, running = final
    checks = {"no_problems": tally.total.get("problem", 0) == 0,
              "kv_blocks_free_after": used == 0 and running == 0}
    panics = sum(1 for line in open(log_path, errors="replace") if "panicked" in line)
    checks["no_panics"] = panics == 0
    if args.mode == "overload":
        checks["some_refused_with_429"] = tally.total.get("refused_429", 0) > 0
        checks["some_completed"] = tally.total.get("ok", 0) > 0
    else:
        for key, slack in (("rss_mib", 1.10), ("fds", 1.10), ("threads", 1.10)):
            f = flat(samples, key)
            checks[f"{key}_flat"] = f is not None and f["last_third_mean"] <= f["first_third_mean"] * slack + 2
    return checks, panics


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["overload", "soak"])
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--interval", type=float, default=10)
    p.add_argument("--concurrency", type=int, default=0,
                   help="clients (default: overload 10 x (max_running + max_queue), soak 8)")
    p.add_argument("--max-running", type=int, default=4)
    p.add_argument("--max-queue", type=int, default=12)
    p.add_argument("--kv-cache-mib", type=int, default=256)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "kr-serve"))
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if not args.concurrency:
        args.concurrency = 10 * (args.max_running + args.max_queue) if args.mode == "overload" else 8
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "server.log")
    with open(log_path, "w") as log:
        proc, base, cmd = start_server(args, log)
        model = httpx.get(base + "/v1/models").json()["data"][0]["id"]
        try:
            tally, samples = asyncio.run(run(args, base, proc.pid, model))
            final = settle(base)
            end = proc_stats(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    checks, panics = verdict(args, tally, samples, final, log_path)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    report = {"mode": args.mode, "machine": {"host": platform.node(), "cpus": os.cpu_count(),
                                             "platform": platform.platform()},
              "commit": commit, "command": " ".join(sys.argv), "server_command": " ".join(cmd),
              "settings": vars(args), "totals": tally.total, "problems": tally.problems,
              "final": {"kv_blocks_used": final[0], "running": final[1], **end},
              "server_exit_status": proc.returncode, "panics_in_log": panics,
              "flatness": {k: flat(samples, k) for k in ("rss_mib", "fds", "threads", "kv_blocks_used")},
              "checks": checks, "passed": all(checks.values()), "samples": samples}
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    if args.mode == "soak" and samples:
        svg(samples, os.path.join(args.out, "soak.svg"))
    print(json.dumps({"totals": tally.total, "checks": checks}, indent=1))
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
