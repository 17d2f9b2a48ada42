"""`msr data images` throughput: N small JPEGs from a local server that adds a fixed latency per request,
downloaded at concurrency 16 and at concurrency 1 (fresh folders each), plus this process's peak RSS.

The server runs in a child process (its own interpreter, so it does not share the GIL with the
downloader). Prints one JSON object on its last line.

    python bench/images.py [--n 1000] [--latency_ms 20]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import resource
import socket
import tempfile
import time
from pathlib import Path


def _serve(latency: float, port_queue) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 40, 200)).save(out, format="JPEG")
    body = out.getvalue()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as image CDNs do

        def setup(self) -> None:  # no Nagle: headers and body are two writes, and a delayed ACK would add ~40 ms
            super().setup()
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            time.sleep(latency)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.request_queue_size = 128
    port_queue.put(httpd.server_address[1])
    httpd.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--latency_ms", type=float, default=20.0)
    parser.add_argument("--high", type=int, default=16)
    args = parser.parse_args()

    from msr.data.download import ImagesConfig, download_images

    queue = mp.Queue()
    server = mp.Process(target=_serve, args=(args.latency_ms / 1000, queue), daemon=True)
    server.start()
    port = queue.get(timeout=30)
    result = {"bench": "images", "n": args.n, "latency_ms": args.latency_ms}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            meta = Path(tmp) / "meta.jsonl"
            meta.write_text("".join(json.dumps({"parent_asin": f"B{i:07d}", "images": [
                {"variant": "MAIN", "hi_res": f"http://127.0.0.1:{port}/{i}.jpg"}]}) + "\n"
                for i in range(args.n)))
            for concurrency in (args.high, 1):
                cfg = ImagesConfig(items=str(meta), image_dir=f"{tmp}/c{concurrency}", format="amazon2023",
                                   concurrency=concurrency, timeout=10.0, progress=False)
                cfg.validate()
                summary = download_images(cfg)
                assert summary["downloaded"] == args.n, summary
                result[f"c{concurrency}_seconds"] = summary["seconds"]
                result[f"c{concurrency}_images_per_s"] = summary["images_per_s"]
    finally:
        server.terminate()
        server.join()
    result["speedup"] = round(result[f"c{args.high}_images_per_s"] / result["c1_images_per_s"], 2)
    result["target_speedup"] = 8
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
