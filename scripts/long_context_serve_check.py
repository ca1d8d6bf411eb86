#!/usr/bin/env python3
"""A long request beside short ones, through the server (issue 18, must-show 5).

Starts `kr-serve serve` on MODEL twice (a fresh server each time, so the second run cannot
reuse the first one's prompt from the prefix cache):
  alone:  one greedy streamed completion of a LONG-token prompt (token ids), MAX_TOKENS out;
  beside: the same request while SHORT clients send short streamed completions back to back
          until it ends (the long prompt is prefilled in chunks between their decode steps).
Checks that both runs stream the same token ids, that no request failed, and that every KV
block is free afterwards; reports the short requests' time per output token (TPOT) and time
to first token, and the long one's TTFT and TPOT, in both runs.

Only the standard library (the GPU machine has no httpx). Writes OUT/report.json with the
machine, commit and command; exit status 1 when a check fails.

  python3 scripts/long_context_serve_check.py --binary target/release/kr-serve \\
      --model 8b-bf16.gguf --device cuda --long 32768 --out reports/long-serve
"""
import argparse
import http.client
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path)
    r = c.getresponse()
    return r.status, r.read().decode()


def start_server(args, log_path):
    port = free_port()
    cmd = [args.binary, "serve", "--model", args.model, "--port", str(port),
           "--device", args.device, "--max-model-len", str(args.long + args.max_tokens + 64)] + args.server_arg
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(3000):
        try:
            if get(port, "/ready")[0] == 200:
                return proc, port, cmd
        except OSError:
            pass
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}; see {log_path}")
        time.sleep(0.1)
    sys.exit("the server did not become ready")


def stream_completion(port, model, prompt, max_tokens):
    """One greedy streamed completion; (tokens, chunk arrival times, start, error, and per
    token the two most likely tokens with their logprobs)."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "logprobs": 2, "ignore_eos": True})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.monotonic()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        return [], [], t0, f"HTTP {r.status}: {r.read()[:300]!r}", []
    ids, times, tops = [], [], []
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data:") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[5:])
        choice = chunk["choices"][0]
        lp = choice.get("logprobs") or {}
        toks = lp.get("tokens") or []
        if toks:  # the closing chunk carries only the finish reason
            ids.extend(toks)
            tops.extend(lp.get("top_logprobs") or [{}] * len(toks))
            times.append(time.monotonic())
    return ids, times, t0, None, tops


def timing(times, t0):
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"ttft_s": round(times[0] - t0, 4) if times else None,
            "tpot_ms": round(1e3 * statistics.mean(gaps), 2) if gaps else None}


def metric(page, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", page, re.M)
    return float(m.group(1)) if m else None


def settle(port):
    for _ in range(200):
        page = get(port, "/metrics")[1]
        used, running = metric(page, "kr_kv_blocks_used"), metric(page, "kr_requests_running")
        if used == 0 and running == 0:
            break
        time.sleep(0.1)
    return used, running


def run(args, beside):
    name = "beside" if beside else "alone"
    proc, port, cmd = start_server(args, os.path.join(args.out, f"server-{name}.log"))
    try:
        model = json.loads(get(port, "/v1/models")[1])["data"][0]["id"]
        prompt = [(i * 7919 + 13) % 30000 + 1000 for i in range(args.long)]
        result, shorts, stop = {}, [], threading.Event()

        def long_request():
            result["ids"], times, t0, result["error"], result["tops"] = stream_completion(
                port, model, prompt, args.max_tokens)
            result.update(timing(times, t0))
            stop.set()

        def short_client(k):
            n = 0
            while not stop.is_set():
                p = [(k * 1000 + n * 31 + i * 17) % 30000 + 1000 for i in range(args.short_prompt)]
                ids, times, t0, err, _ = stream_completion(port, model, p, args.short_tokens)
                shorts.append({"client": k, "tokens": len(ids), "error": err,
                               "during_long": not stop.is_set(), **timing(times, t0)})
                n += 1
                if err:
                    break

        threads = [threading.Thread(target=long_request)]
        if beside:
            threads += [threading.Thread(target=short_client, args=(k,)) for k in range(args.short)]
            for t in threads[1:]:
                t.start()
            time.sleep(1.0)  # the short ones are decoding when the long prompt arrives
        threads[0].start()
        for t in threads:
            t.join()
        used, running = settle(port)
        during = [s for s in shorts if s["during_long"] and s["tpot_ms"] is not None]
        return {"command": cmd, "long": {k: result.get(k) for k in ("ttft_s", "tpot_ms", "error")},
                "ids": result.get("ids", []), "tops": result.get("tops", []), "kv_blocks_used_after": used, "running_after": running,
                "short_requests": len(shorts),
                "short_errors": [s["error"] for s in shorts if s["error"]][:5],
                "short_tpot_ms_median": statistics.median([s["tpot_ms"] for s in during]) if during else None,
                "short_ttft_s_median": statistics.median([s["ttft_s"] for s in during]) if during else None}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "kr-serve"))
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--long", type=int, default=32768, help="prompt tokens of the long request")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--short", type=int, default=8, help="concurrent short clients")
    ap.add_argument("--short-prompt", type=int, default=128)
    ap.add_argument("--short-tokens", type=int, default=64)
    ap.add_argument("--server-arg", action="append", default=[],
                    help="one more argument for `kr-serve serve` (repeatable), e.g. --server-arg=--batch-invariant")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    alone, beside = run(args, False), run(args, True)
    same = alone["ids"] == beside["ids"] and len(alone["ids"]) == args.max_tokens
    first_diff = next((i for i, (a, b) in enumerate(zip(alone["ids"], beside["ids"])) if a != b), None)
    # Where the runs part, how close the alone run's two most likely tokens were: a margin of
    # a few thousandths is a near-tie that rounding can flip, not a wrong KV block.
    margin = None
    if first_diff is not None and first_diff < len(alone["tops"]):
        top = sorted(alone["tops"][first_diff].values(), reverse=True)
        margin = top[0] - top[1] if len(top) >= 2 else None
    checks = {"same_tokens": same,
              "no_errors": not alone["long"]["error"] and not beside["long"]["error"]
              and not beside["short_errors"],
              "kv_blocks_free_after": all(r["kv_blocks_used_after"] == 0 and r["running_after"] == 0
                                          for r in (alone, beside)),
              "short_requests_ran_beside": (beside["short_tpot_ms_median"] is not None)}
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    report = {"machine": {"host": platform.node(), "cpu": platform.processor(),
                          "gpu": subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                                capture_output=True, text=True).stdout.strip()
                          if args.device != "cpu" else None},
              "commit": commit, "command": " ".join(sys.argv), "settings": vars(args),
              "checks": checks, "first_differing_token": first_diff,
              "logprob_margin_at_first_difference": margin,
              "alone": {k: v for k, v in alone.items() if k not in ("ids", "tops")},
              "beside": {k: v for k, v in beside.items() if k not in ("ids", "tops")},
              "tokens_alone": alone["ids"], "tokens_beside": beside["ids"]}
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({"checks": checks, "first_differing_token": first_diff,
                      "logprob_margin_at_first_difference": margin, "alone": report["alone"]["long"],
                      "beside": report["beside"]["long"],
                      "short_tpot_ms_median": beside["short_tpot_ms_median"],
                      "short_ttft_s_median": beside["short_ttft_s_median"],
                      "short_requests": beside["short_requests"]}, indent=1))
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
