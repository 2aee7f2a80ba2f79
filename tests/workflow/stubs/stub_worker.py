"""A stand-in for ``python -m gpu_worker`` honouring the container contract (tests only).

train: copies hyperparameters into model/, writes progress.json; hyperparameter
``fail`` makes it write output/failure and exit 1. serve: /ping and /invocations echoing
each JSON line with ``"echo": true`` added.
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def train(base: Path) -> int:
    hyperparameters = json.loads((base / "input/config/hyperparameters.json").read_text())
    (base / "output").mkdir(exist_ok=True)
    progress = {"stage": "train", "done": 10, "total": 10, "unit": "tokens", "eta_s": 0}
    (base / "output/progress.json").write_text(json.dumps(progress))
    if hyperparameters.get("fail"):
        (base / "output/failure").write_text(f"InvalidHyperparameter: {hyperparameters['fail']}")
        return 1
    channels = (
        sorted(p.name for p in (base / "input/data").glob("*"))
        if (base / "input/data").exists()
        else []
    )
    (base / "model/cfg.json").write_text(
        json.dumps({"hyperparameters": hyperparameters, "channels": channels})
    )
    (base / "checkpoints/step-1.pt").write_text("checkpoint")
    return 0


def serve(base: Path, port: int) -> int:
    model_files = sorted(p.name for p in (base / "model").iterdir())

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200 if self.path == "/ping" else 404)
            self.end_headers()

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            out = []
            for line in body.splitlines():
                if line.strip():
                    record = json.loads(line)
                    record.update(echo=True, model_files=model_files)
                    out.append(json.dumps(record))
            data = ("\n".join(out) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("--base-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    sys.exit(train(args.base_dir) if args.command == "train" else serve(args.base_dir, args.port))
