"""A real HTTP server that answers like the PAD API, its image host and the registry.

It is the project's only "network": tests, the demo and the benchmarks point
``PAD_API_URL`` / ``PAD_REGISTRY_URL`` at it, so the code under test runs its real HTTP
path (retries, integrity checks, keep-alive) against byte-exact, reproducible answers.
Stdlib only (``ThreadingHTTPServer``) so starting one costs milliseconds and no extra
dependency.

Faults are injected per request in this order: ``latency``, ``error_rate`` (500),
edge-case behaviour of the route, then ``truncate_rate`` (image and weights bodies only).
Requests to ``/emulator/*`` (stats, reset) are neither counted nor faulted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from .catalog import Catalog, DatasetSpec, EmulatorConfig, ModelArtifact, folder_of, image_url

log = logging.getLogger(__name__)

KINDS = ("api", "image", "weights", "registry", "other")
_JSON = "application/json"

_IMAGE_RE = re.compile(
    r"^/+(?:var/www/html/)?images/padimages/processed/(?P<folder>\d+)/(?P<id>\d+)_processed\.png$"
)
_WEIGHTS_RE = re.compile(r"^/+neuralnetworks/([^/]+)/([^/]+)/([^/]+)/([^/]+)$")
_REGISTRY_RE = re.compile(r"^/+registry/datasets/([^/]+)/([^/]+)$")
_CATALOG_RE = re.compile(r"^/+registry/docs/api/catalog\.json$")


class _Reply:
    """One response: status, body, content type, and whether it may be truncated."""

    __slots__ = ("status", "body", "content_type", "truncatable", "headers")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str = _JSON,
        truncatable: bool = False,
        headers: dict[str, str] | None = None,
    ):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.truncatable = truncatable
        self.headers = headers or {}


def _json(obj: Any, status: int = 200) -> _Reply:
    # FastAPI's JSONResponse: compact separators, UTF-8, no ASCII escaping.
    body = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return _Reply(status, body.encode("utf-8"))


def _not_found() -> _Reply:
    return _json({"detail": "Not Found"}, 404)


def _int_error(where: str, name: str, raw: str) -> dict[str, Any]:
    return {
        "type": "int_parsing",
        "loc": [where, name],
        "msg": "Input should be a valid integer, unable to parse string as an integer",
        "input": raw,
    }


def _parse_int(raw: str) -> int | None:
    text = raw.strip()
    if not re.fullmatch(r"[+-]?\d+", text):
        return None
    return int(text)


def _classify(path: str) -> str:
    if path.startswith("/api/"):
        return "api"
    if _IMAGE_RE.match(path):
        return "image"
    if re.match(r"^/+neuralnetworks/", path):
        return "weights"
    if re.match(r"^/+registry/", path):
        return "registry"
    return "other"


class _Stats:
    """Request counters; every counted request is recorded once, with its final status."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0  # requests parsed and not yet answered (survives reset)
        self.last_activity = time.monotonic()
        self.reset()

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.last_activity = time.monotonic()

    def end(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self.last_activity = time.monotonic()

    def idle_for(self) -> float:
        """Seconds since the last request started or ended; 0.0 while one is in flight."""
        with self._lock:
            return 0.0 if self.in_flight else time.monotonic() - self.last_activity

    def reset(self) -> None:
        with self._lock:
            self.kinds: Counter[str] = Counter()
            self.errors_5xx: Counter[str] = Counter()
            self.statuses: Counter[int] = Counter()
            self.by_path: Counter[str] = Counter()
            self.truncated = 0
            self.bytes_sent = 0

    def record(self, kind: str, path: str, status: int, sent: int, truncated: bool) -> None:
        with self._lock:
            self.kinds[kind] += 1
            self.statuses[status] += 1
            self.by_path[path] += 1
            if status >= 500:
                self.errors_5xx[kind] += 1
            if truncated:
                self.truncated += 1
            self.bytes_sent += sent

    def add_bytes(self, sent: int) -> None:
        with self._lock:
            self.bytes_sent += sent

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {k: self.kinds.get(k, 0) for k in KINDS}
            out["total"] = sum(self.kinds.values())
            out["errors_5xx"] = sum(self.errors_5xx.values())
            out["errors_5xx_by_kind"] = {k: self.errors_5xx.get(k, 0) for k in KINDS}
            out["by_status"] = {str(k): v for k, v in sorted(self.statuses.items())}
            out["truncated"] = self.truncated
            out["bytes_sent"] = self.bytes_sent
            out["by_path"] = dict(self.by_path)
            return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # many parallel downloaders connect at once
    allow_reuse_address = True
    emulator: Emulator

    def __init__(self, address: tuple[str, int], emulator: Emulator):
        self.emulator = emulator
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed, timed out) is normal here: log it, do not print."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, TimeoutError)):
            log.debug("client %s went away: %r", client_address, exc)
        else:
            log.error("emulator failed serving %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections
    server_version = "pad-assets-emulator/1.0"
    sys_version = ""
    timeout = 120  # idle keep-alive connections do not hold a thread forever
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.sockets_lock:
            self.server.open_sockets.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.sockets_lock:
                self.server.open_sockets.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        self.server.emulator._handle(self, head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self.server.emulator._handle(self, head=True)

    def do_POST(self) -> None:  # noqa: N802
        self.server.emulator._handle_post(self)

    def send_reply(self, reply: _Reply, head: bool, cut: bool = False) -> int:
        """Write a reply; with ``cut`` send half the body under the full Content-Length."""
        body = reply.body
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in reply.headers.items():
            self.send_header(k, v)
        if cut:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if head:
            return 0
        payload = body[: len(body) // 2] if cut else body
        rate = self.server.emulator.config.trickle_bytes_per_s if reply.truncatable else 0.0
        try:
            if rate > 0:  # a slow server: small pieces, each well within a read timeout
                step = max(1, int(rate / 10))
                for i in range(0, len(payload), step):
                    self.wfile.write(payload[i:i + step])
                    self.wfile.flush()
                    time.sleep(step / rate)
                return len(payload)
            self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return 0
        return len(payload)


class Emulator:
    """The local PAD server: start it, point pad_assets at ``base_url``, stop it.

    >>> with Emulator() as emu:          # doctest: +SKIP
    ...     os.environ["PAD_API_URL"] = emu.base_url
    """

    def __init__(
        self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ):
        self.config = config or EmulatorConfig()
        self.catalog = Catalog(self.config)
        self.host = host
        self.port = int(port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stats = _Stats()
        self._rng = random.Random(self.config.seed)
        self._rng_lock = threading.Lock()
        self._base_url: str | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> str:
        """Bind (ephemeral port unless one was given), serve in a daemon thread, return the URL."""
        if self._server is not None:
            return self.base_url
        self._server = _Server((self.host, self.port), self)
        port = self._server.server_address[1]
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self._base_url = f"http://{shown}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"pad-emulator:{port}",
            daemon=True,
        )
        self._thread.start()
        return self._base_url

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections (a stopped server answers nothing)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with server.sockets_lock:
            open_sockets = list(server.open_sockets)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the emulator is not started; call start() first")
        return self._base_url

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/v2"

    @property
    def registry_url(self) -> str:
        return f"{self.base_url}/registry/datasets"

    def image_url(self, card_id: int) -> str:
        """The card's image URL in the registry's (double-slash) form."""
        return image_url(self.base_url, card_id)

    # ------------------------------------------------------------ world
    def add_cards(self, dataset_name: str, card_ids: list[int] | range) -> list[int]:
        return self.catalog.add_cards(dataset_name, card_ids)

    def add_model(self, artifact: ModelArtifact) -> None:
        self.catalog.add_model(artifact)

    def dataset(self, name: str) -> DatasetSpec | None:
        return self.catalog.dataset(name)

    def warm(self, progress: Any = None) -> None:
        """Compute every manifest md5 now (big configs: minutes once, then memoised)."""
        self.catalog.precompute_md5s(progress=progress)

    # ------------------------------------------------------------ stats
    def stats(self) -> dict[str, Any]:
        """Counts per kind (api/image/weights/registry/other/total), 5xx answers, bytes."""
        return self._stats.snapshot()

    def wait_idle(self, quiet_s: float = 0.3, timeout_s: float = 15.0) -> None:
        """Block until no request has been in flight for ``quiet_s``.

        A client killed mid-download leaves requests the server still answers (into a reset
        socket) and counts; call this before ``reset_stats`` so those land before the reset.
        """
        end = time.monotonic() + timeout_s
        while self._stats.idle_for() < quiet_s:
            if time.monotonic() > end:
                raise TimeoutError(f"emulator at {self._base_url} still busy after {timeout_s} s")
            time.sleep(0.02)

    def reset_stats(self, rearm_faults: bool = True) -> None:
        """Zero the counters; by default also re-arm the one-shot 500 of ``EdgeCases.FLAKY``."""
        self._stats.reset()
        if rearm_faults:
            self.catalog.rearm_faults()

    # ------------------------------------------------------------ request handling
    def _draw(self, rate: float) -> bool:
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        with self._rng_lock:
            return self._rng.random() < rate

    def _handle_post(self, h: _Handler) -> None:
        path = h.path.split("?", 1)[0]
        length = int(h.headers.get("Content-Length") or 0)
        if length:
            h.rfile.read(length)
        if path.rstrip("/") == "/emulator/reset-stats":
            self.reset_stats()
            h.send_reply(_json({"status": "ok"}), head=False)
            return
        reply = _json({"detail": "Method Not Allowed"}, 405)
        reply.headers["Allow"] = "GET, HEAD"
        h.send_reply(reply, head=False)
        self._stats.record(_classify(path), path, 405, len(reply.body), False)

    def _handle(self, h: _Handler, head: bool) -> None:
        raw_path, _, query = h.path.partition("?")
        path = raw_path
        if path.startswith("/emulator/"):
            h.send_reply(self._control(path.rstrip("/")), head)
            return
        kind = _classify(path)
        status, recorded = 500, False
        self._stats.begin()
        try:
            if self.config.latency > 0:
                time.sleep(self.config.latency)
            if self._draw(self.config.error_rate):
                reply = _json({"detail": "Internal Server Error (emulated: error_rate)"}, 500)
                if self.config.retry_after is not None:
                    reply.headers["Retry-After"] = f"{self.config.retry_after:g}"
            elif path in self.config.redirects:
                reply = _json({"detail": "Found"}, 302)
                reply.headers["Location"] = self.config.redirects[path]
            else:
                try:
                    reply = self._route(path, query, kind)
                except Exception as exc:  # a bug or a failing models_provider
                    log.exception("emulator failed on %s", path)
                    reply = _json(
                        {"detail": f"Internal Server Error: {type(exc).__name__}: {exc}"}, 500
                    )
            cut = (
                reply.status == 200 and reply.truncatable and self._draw(self.config.truncate_rate)
            )
            status = reply.status
            # Counted before the answer is written: a client holding the answer sees its count.
            self._stats.record(kind, path, status, 0, cut)
            recorded = True
            self._stats.add_bytes(h.send_reply(reply, head, cut=cut))
        finally:
            if not recorded:  # failed before answering
                self._stats.record(kind, path, status, 0, False)
            self._stats.end()

    def _control(self, path: str) -> _Reply:
        if path == "/emulator/stats":
            return _json(self.stats())
        if path == "/emulator/reset-stats":
            self.reset_stats()
            return _json({"status": "ok"})
        return _not_found()

    def _route(self, path: str, query: str, kind: str) -> _Reply:
        if kind == "api":
            return self._api(path, query)
        if kind == "image":
            m = _IMAGE_RE.match(path)
            assert m is not None
            return self._image(int(m["folder"]), int(m["id"]))
        if kind == "weights":
            m = _WEIGHTS_RE.match(path)
            if not m:
                return _not_found()
            data = self.catalog.weights(*(unquote(g) for g in m.groups()))
            if data is None:
                return _not_found()
            return _Reply(200, data, "application/octet-stream", truncatable=True)
        if kind == "registry" and _CATALOG_RE.match(path):
            return _Reply(200, self.catalog.catalog_json(), "application/json")
        if kind == "registry":
            m = _REGISTRY_RE.match(path)
            if not m:
                return _not_found()
            name, filename = unquote(m[1]), unquote(m[2])
            data = self.catalog.registry_file(name, filename, self.base_url)
            if data is None:
                return _not_found()
            # raw.githubusercontent.com serves every text file as text/plain.
            return _Reply(200, data, "text/plain; charset=utf-8")
        return _not_found()

    def _image(self, folder: int, card_id: int) -> _Reply:
        if folder != folder_of(card_id):
            return _not_found()
        delay = self.catalog.image_delay(card_id)
        if delay > 0:
            time.sleep(delay)
        if self.catalog.take_flaky_failure(card_id):
            return _json({"detail": "Internal Server Error (emulated: flaky card)"}, 500)
        data = self.catalog.image_bytes(card_id)
        if data is None:
            return _not_found()
        return _Reply(200, data, "image/png", truncatable=True)

    def _api(self, path: str, query: str) -> _Reply:
        parts = [p for p in path.split("/") if p]
        if parts[:2] != ["api", "v2"]:
            return _not_found()
        rest = parts[2:]
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        cat = self.catalog

        def paged(items_fn: Any, default_limit: int = 100) -> _Reply:
            errors = []
            values = {"skip": 0, "limit": default_limit}
            for name in ("skip", "limit"):
                if name in params:
                    parsed = _parse_int(params[name])
                    if parsed is None:
                        errors.append(_int_error("query", name, params[name]))
                    else:
                        values[name] = parsed
            if errors:
                return _json({"detail": errors}, 422)
            return _json(items_fn(values["skip"], values["limit"]))

        def int_path(raw: str) -> int | _Reply:
            parsed = _parse_int(raw)
            if parsed is None:
                return _json({"detail": [_int_error("path", "id", raw)]}, 422)
            return parsed

        if rest == ["projects"]:
            return paged(lambda s, n: cat.projects()[max(s, 0) : max(s, 0) + max(n, 0)])
        if len(rest) == 2 and rest[0] == "projects":
            project = cat.project(unquote(rest[1]))
            return _json(project) if project is not None else _not_found()
        if len(rest) == 3 and rest[0] == "projects" and rest[2] == "cards":
            cards = cat.project_cards(unquote(rest[1]))
            return _json(cards) if cards is not None else _not_found()
        if rest == ["cards"]:
            return paged(cat.cards_page)
        if rest == ["cards", "issues"]:
            return paged(lambda s, n: cat.issues()[max(s, 0) : max(s, 0) + max(n, 0)])
        if len(rest) == 3 and rest[:2] == ["cards", "issues"]:
            found = [i for i in cat.issues() if str(i["id"]) == unquote(rest[2])]
            return _json(found[0]) if found else _not_found()
        if len(rest) == 2 and rest[0] == "cards":
            cid = int_path(rest[1])
            if isinstance(cid, _Reply):
                return cid
            record = cat.card_record(cid)
            return _json(record) if record is not None else _not_found()
        if rest == ["neural-networks"]:
            return paged(
                lambda s, n: cat.model_records(self.base_url)[max(s, 0) : max(s, 0) + max(n, 0)]
            )
        if len(rest) == 2 and rest[0] == "neural-networks":
            nid = int_path(rest[1])
            if isinstance(nid, _Reply):
                return nid
            found = [r for r in cat.model_records(self.base_url) if int(r["id"]) == nid]
            return _json(found[0]) if found else _not_found()
        return _not_found()


# ---------------------------------------------------------------------------- CLI
def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pad-assets emulator",
        description="Serve a local, SYNTHETIC PAD API + image host + dataset registry.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    p.add_argument(
        "--cards", type=int, default=None, help="cards in FHI2020_Stratified_Sampling (default 48)"
    )
    p.add_argument(
        "--full-fhi2020", action="store_true", help="8,001 cards (5,923 dev + 2,078 test)"
    )
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    p.add_argument(
        "--error-rate", type=float, default=0.0, help="fraction of requests answered 500"
    )
    p.add_argument(
        "--truncate-rate",
        type=float,
        default=0.0,
        help="fraction of image/weights bodies cut short",
    )
    p.add_argument(
        "--trickle",
        type=float,
        default=0.0,
        metavar="BYTES_PER_S",
        help="send image/weights bodies at this rate (a slow server; default: at once)",
    )
    p.add_argument(
        "--retry-after", type=float, default=None, help="Retry-After seconds on emulated 500s"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fault RNG")
    p.add_argument(
        "--real-images",
        type=Path,
        default=None,
        metavar="DIR",
        help="serve DIR/{id}_processed.png instead of synthetic images when present",
    )
    p.add_argument(
        "--md5-cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="memoise md5s of generated images across runs",
    )
    p.add_argument(
        "--full-registry",
        action="store_true",
        help="serve every registry dataset at its published size (55,317 rows in 11 "
        "datasets; ids, splits and labels as published, synthetic pixels, no md5s)",
    )
    p.add_argument(
        "--warm",
        action="store_true",
        help="compute every manifest md5 right after start (default with --full-fhi2020)",
    )
    return p


def cli_main(argv: list[str] | None = None) -> int:
    """``pad-assets emulator``: serve until Ctrl-C (or SIGTERM), then exit 0."""
    args = _build_parser().parse_args(argv)
    if sum([args.full_fhi2020, args.full_registry, args.cards is not None]) > 1:
        print("pad-assets emulator: --cards, --full-fhi2020 and --full-registry are exclusive",
              file=sys.stderr)
        return 2
    knobs: dict[str, Any] = {
        "latency": args.latency,
        "error_rate": args.error_rate,
        "truncate_rate": args.truncate_rate,
        "trickle_bytes_per_s": args.trickle,
        "retry_after": args.retry_after,
        "seed": args.seed,
        "real_images_dir": args.real_images,
        "md5_cache_dir": args.md5_cache_dir,
    }
    try:
        if args.full_fhi2020:
            config = EmulatorConfig.full_fhi2020(**knobs)
        elif args.full_registry:
            from .full_registry import full_registry_config

            config = full_registry_config(**knobs)
        else:
            config = EmulatorConfig.with_cards(48 if args.cards is None else args.cards, **knobs)
    except ValueError as exc:
        print(f"pad-assets emulator: {exc}", file=sys.stderr)
        return 2

    emulator = Emulator(config, host=args.host, port=args.port)
    try:
        base = emulator.start()
    except OSError as exc:
        print(
            f"pad-assets emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr
        )
        return 1
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, _on_signal)
    try:
        print(base)
        print(f"export PAD_API_URL={base}")
        print(f"export PAD_REGISTRY_URL={emulator.registry_url}", flush=True)
        names = ", ".join(config.datasets[i].name for i in range(len(config.datasets)))
        print(
            f"SYNTHETIC PAD API emulator on {base} (datasets: {names}); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        if args.warm or args.full_fhi2020:
            started = time.monotonic()

            def progress(done: int, total: int) -> None:
                if done == total or done % 250 == 0:
                    print(
                        f"  rendering cards for manifests: {done}/{total}",
                        file=sys.stderr,
                        flush=True,
                    )

            emulator.warm(progress=progress)
            print(
                f"manifests ready ({time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True
            )
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        emulator.stop()
    return 0
