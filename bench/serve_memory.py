"""`ferpipe serve`'s memory over many photo requests: RSS after a warm-up and after N more.

    uv run python bench/serve_memory.py [--requests 2000]

Target (light-core issue): within 100 MB of where it started after 2,000 photo requests.
"""
from __future__ import annotations

import argparse
import base64
import json
import socket
import subprocess
import sys
import time
import urllib.request

import cv2
import skimage.data as sd


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "ferpipe", "serve", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        photo = cv2.imencode(".jpg", cv2.resize(cv2.cvtColor(sd.astronaut(), cv2.COLOR_RGB2BGR), (845, 496)))[1]
        body = json.dumps({"dataframe_records": [{"image": base64.b64encode(photo.tobytes()).decode()}]}).encode()

        def ask() -> int:
            request = urllib.request.Request(f"{url}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status

        for _ in range(50):
            ask()
        start, began = rss_mb(server.pid), time.perf_counter()
        codes = [ask() for _ in range(args.requests)]
        print(json.dumps({"requests": args.requests, "photo": "845x496 JPEG", "all_200": set(codes) == {200},
                          "rss_mb_after_warmup": round(start, 1), "rss_mb_after": round(rss_mb(server.pid), 1),
                          "grew_mb": round(rss_mb(server.pid) - start, 1),
                          "seconds": round(time.perf_counter() - began, 1)}))
    finally:
        server.terminate()
        stderr = server.communicate(timeout=60)[1].decode(errors="replace").strip()
        if stderr:
            print(f"server stderr: {stderr[:2000]}", file=sys.stderr)


if __name__ == "__main__":
    main()
