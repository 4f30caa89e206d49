"""Worker metrics in the Prometheus text exposition format (written by hand, no client library), served on
GKD_WORKER_METRICS_PORT at /metrics, with /healthz for container health checks."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WorkerMetrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.steps_total = 0
        self.step_seconds_total = 0.0
        self.last_step_seconds: float | None = None
        self.jobs: dict[str, int] = {}
        self.running = 0
        self.started = time.time()

    def step(self, seconds: float | None) -> None:
        with self.lock:
            self.steps_total += 1
            if seconds is not None:
                self.step_seconds_total += seconds
                self.last_step_seconds = seconds

    def busy(self, value: bool) -> None:
        with self.lock:
            self.running = 1 if value else 0

    def job(self, status: str) -> None:
        with self.lock:
            self.jobs[status] = self.jobs.get(status, 0) + 1

    def render(self) -> str:
        with self.lock:
            lines = [
                "# HELP gkd_worker_training_steps_total Optimisation steps run by this worker.",
                "# TYPE gkd_worker_training_steps_total counter",
                f"gkd_worker_training_steps_total {self.steps_total}",
                "# HELP gkd_worker_training_step_seconds_total Wall time between consecutive steps, summed.",
                "# TYPE gkd_worker_training_step_seconds_total counter",
                f"gkd_worker_training_step_seconds_total {self.step_seconds_total:.6f}",
                "# HELP gkd_worker_steps_per_second Throughput of the latest step.",
                "# TYPE gkd_worker_steps_per_second gauge",
                f"gkd_worker_steps_per_second {1.0 / self.last_step_seconds if self.last_step_seconds else 0.0:.6f}",
                "# HELP gkd_worker_busy 1 while a job runs.",
                "# TYPE gkd_worker_busy gauge",
                f"gkd_worker_busy {self.running}",
                "# HELP gkd_worker_jobs_total Jobs this worker ended, by outcome.",
                "# TYPE gkd_worker_jobs_total counter",
            ]
            lines += [f'gkd_worker_jobs_total{{status="{s}"}} {n}' for s, n in sorted(self.jobs.items())]
            lines += ["# HELP gkd_worker_start_time_seconds Start of this worker (Unix time).",
                      "# TYPE gkd_worker_start_time_seconds gauge",
                      f"gkd_worker_start_time_seconds {self.started:.3f}"]
        return "\n".join(lines) + "\n"


WORKER_METRICS = WorkerMetrics()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/metrics":
            body, kind = WORKER_METRICS.render().encode(), "text/plain; version=0.0.4; charset=utf-8"
        elif self.path == "/healthz":
            body, kind = b'{"status":"ok"}', "application/json"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        return


def serve_metrics(port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), _Handler)
    threading.Thread(target=server.serve_forever, name="gkd-metrics", daemon=True).start()
    return server
