"""A loopback HTTP server that records the Kubeflow Pipelines API calls made to it and answers
the way the KFP v2beta1 REST API does (enough for runs, experiments and recurring runs)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Recorder:
    def __init__(self):
        self.calls: list[dict] = []
        self.experiments: dict[str, dict] = {}


def _handler(rec: Recorder):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):  # quiet
            pass

        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> dict:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            url = urlparse(self.path)
            call = {
                "method": self.command,
                "path": url.path,
                "query": parse_qs(url.query),
                "headers": dict(self.headers),
                "body": json.loads(raw) if raw else None,
            }
            rec.calls.append(call)
            return call

        def do_GET(self):
            call = self._record()
            p = call["path"]
            if p.endswith("/healthz"):
                return self._reply(200, {"multi_user": False, "pipeline_store": "database"})
            if p.endswith("/experiments"):
                flt = call["query"].get("filter", [""])[0]
                exps = list(rec.experiments.values())
                if flt:
                    pred = json.loads(flt)["predicates"][0]
                    want = pred.get("string_value", pred.get("stringValue"))
                    exps = [e for e in exps if e["display_name"] == want]
                return self._reply(200, {"experiments": exps, "total_size": len(exps)})
            if "/experiments/" in p:
                eid = p.rsplit("/", 1)[-1]
                return self._reply(200, rec.experiments[eid])
            if "/runs/" in p:
                rid = p.rsplit("/", 1)[-1]
                return self._reply(200, {"run_id": rid, "display_name": "r", "state": "PENDING"})
            return self._reply(404, {"error": "not found", "code": 5})

        def do_POST(self):
            call = self._record()
            p, body = call["path"], call["body"] or {}
            if p.endswith("/experiments"):
                eid = f"exp-{len(rec.experiments) + 1}"
                exp = {**body, "experiment_id": eid, "storage_state": "AVAILABLE"}
                rec.experiments[eid] = exp
                return self._reply(200, exp)
            if p.endswith("/runs"):
                return self._reply(200, {**body, "run_id": "run-123", "state": "PENDING"})
            if p.endswith("/recurringruns"):
                return self._reply(200, {**body, "recurring_run_id": "rr-7", "status": "ENABLED"})
            return self._reply(404, {"error": "not found", "code": 5})

    return H


class FakeKfpServer:
    def __init__(self):
        self.recorder = Recorder()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.recorder))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
