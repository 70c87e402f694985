"""marforge's one load generator: asyncio, HTTP/1.1 on raw streams, keep-alive connections, POSTed
bodies, no dependencies (and gRPC, through TorchServe's own stubs).

One process, one event loop, raw streams: it costs far less CPU per request than a thread per
client with `requests`, so on a small machine the server, not the generator, is what is measured.
Every request has a timeout; a timeout or a broken connection is recorded as status 0.

    run_load        N clients for a fixed time, latencies only: every measurement (bench, soak)
    run_grpc_load   the same over TorchServe's gRPC inference API
    Background      N clients in a thread of their own until stopped, each answer recorded (status,
                    the answering version, the error's text): load under a rollout or a crash (tests)

    results = asyncio.run(run_load("http://127.0.0.1:8080/predictions/fashion", bodies,
                                   concurrency=16, seconds=10, headers={"Authorization": "Bearer ..."}))
    with Background(url, body, key=lambda: client.key("inference"), clients=4) as load:
        load.wait_for(20)   # ... then roll out, kill a worker ...
    assert load.failures() == []
"""

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Sample:
    started: float  # time.monotonic()
    latency_ms: float
    status: int  # 0: timeout or connection failure


@dataclass
class LoadResult:
    seconds: float
    samples: list = field(default_factory=list)

    @property
    def ok(self):
        return [s for s in self.samples if s.status == 200]

    @property
    def errors(self):
        return len(self.samples) - len(self.ok)

    def failed_statuses(self):
        """{status: count} of the requests that failed (status 0: timeout or broken connection)."""
        counts = {}
        for s in self.samples:
            if s.status != 200:
                counts[s.status] = counts.get(s.status, 0) + 1
        return dict(sorted(counts.items()))

    def throughput(self):
        return len(self.ok) / self.seconds if self.seconds else 0.0

    def percentile(self, q, samples=None):
        values = sorted(s.latency_ms for s in (self.ok if samples is None else samples))
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q / 100 * len(values)))]


class Connection:
    """One keep-alive HTTP/1.1 connection, opened on the first request and again after a failure."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, body: bytes, timeout: float) -> tuple[int, bytes]:
        """(status, body) of one POST; connecting, sending and the whole answer within `timeout`."""
        return await asyncio.wait_for(self._exchange(head, body), timeout)

    async def _exchange(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(head + body)
        await self.writer.drain()
        return await self._read_response()

    async def _read_response(self) -> tuple[int, bytes]:
        assert self.reader is not None
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed by the server")
        status = int(status_line.split()[1])
        length, chunked, close = None, False, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and value == "close":
                close = True
        body = b""
        if chunked:
            while (size := int((await self.reader.readline()).split(b";")[0], 16)):
                body += (await self.reader.readexactly(size + 2))[:-2]
            await self.reader.readline()
        elif length is not None:
            body = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# What a request can fail with: a timeout, a refused or broken connection, an answer that is not HTTP.
FAILURES = (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError)


def request_head(url: str, length: int, content_type: str, headers: dict[str, str] | None = None) -> bytes:
    """The request line and headers of a POST of `length` bytes to `url`."""
    parts = urlsplit(url)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


async def run_load(url, bodies, concurrency, seconds, headers=None, timeout=30.0, content_type="image/png"):
    """POST `bodies` (cycled) to `url` from `concurrency` keep-alive connections for `seconds`."""
    parts = urlsplit(url)
    heads = [request_head(url, len(b), content_type, headers) for b in bodies]
    requests_cycle = itertools.cycle(zip(heads, bodies))
    result = LoadResult(seconds)
    start = time.monotonic()
    deadline = start + seconds

    async def client():
        connection = Connection(parts.hostname, parts.port or 80)
        while time.monotonic() < deadline:
            head, body = next(requests_cycle)
            t0 = time.monotonic()
            try:
                status, _ = await connection.request(head, body, timeout)
            except FAILURES:
                connection.close()
                status = 0
            result.samples.append(Sample(t0, (time.monotonic() - t0) * 1000, status))
        connection.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.seconds = time.monotonic() - start
    return result


async def run_grpc_load(target, name, version, bodies, concurrency, seconds, key=None, timeout=30.0):
    """Send `bodies` (cycled) to TorchServe's gRPC Predictions from `concurrency` callers on one channel
    for `seconds`; an answer whose body carries an error code counts as failed with that status."""
    import grpc

    from marforge.serve.grpc_client import stubs

    messages, services = stubs()
    requests_cycle = itertools.cycle([messages.PredictionsRequest(model_name=name, model_version=version or "",
                                                                  input={"data": b}) for b in bodies])
    metadata = [("authorization", f"Bearer {key}")] if key else None
    result = LoadResult(seconds)
    start = time.monotonic()
    deadline = start + seconds
    async with grpc.aio.insecure_channel(target) as channel:
        stub = services.InferenceAPIsServiceStub(channel)

        async def caller():
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                try:
                    answer = await stub.Predictions(next(requests_cycle), timeout=timeout, metadata=metadata)
                    status = 200 if not answer.prediction.startswith(b'{"code": ') else int(answer.prediction[9:12])
                except grpc.aio.AioRpcError:
                    status = 0
                result.samples.append(Sample(t0, (time.monotonic() - t0) * 1000, status))

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    result.seconds = time.monotonic() - start
    return result


@dataclass
class Answer:
    """One request of a Background load: status 0 is a timeout, a broken connection or a 200 whose
    body is not JSON; `version` is the answer's "version", `error` the failure's text."""

    client: int
    started: float  # time.monotonic()
    finished: float
    status: int
    version: str | None = None
    error: str | None = None


class Background:
    """`clients` keep-alive connections POSTing `body` to `url` in a thread of their own, from the
    `with` (or start()) until stop(), and at most `max_seconds`; the bearer token is `key()`, asked
    anew for each request (None: no Authorization header). Every answer is kept in `results`."""

    def __init__(self, url: str, body: bytes, key: Callable[[], str | None] | None = None, clients: int = 4,
                 timeout: float = 15.0, max_seconds: float = 600.0, content_type: str = "image/png") -> None:
        self.url, self.body, self.key, self.clients = url, body, key, clients
        self.timeout, self.max_seconds, self.content_type = timeout, max_seconds, content_type
        self.results: list[Answer] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._all()), daemon=True)

    def __enter__(self) -> "Background":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop sending; the requests in flight are answered (or time out) and recorded first."""
        self._stop.set()
        self._thread.join(self.timeout + 5)

    async def _all(self) -> None:
        await asyncio.gather(*(self._client(i) for i in range(self.clients)))

    async def _client(self, index: int) -> None:
        parts = urlsplit(self.url)
        connection = Connection(parts.hostname or "127.0.0.1", parts.port or 80)
        deadline = time.monotonic() + self.max_seconds
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    key = self.key() if self.key else None
                    head = request_head(self.url, len(self.body), self.content_type,
                                        {"Authorization": f"Bearer {key}"} if key else None)
                    status, body = await connection.request(head, self.body, self.timeout)
                    answer = _answer(index, started, status, body)
                except Exception as exc:  # a timeout, a broken connection, a key unread: all failures
                    connection.close()
                    text = str(exc) or (f"no answer within {self.timeout} s" if isinstance(exc, TimeoutError) else "")
                    answer = Answer(index, started, time.monotonic(), 0, None, f"{type(exc).__name__}: {text}")
                with self._lock:
                    self.results.append(answer)
        finally:
            connection.close()

    def failures(self) -> list[Answer]:
        with self._lock:
            return [r for r in self.results if r.status != 200]

    def versions_by_client(self) -> dict[int, list[str]]:
        """Per client, the versions that answered, in order, with repeats collapsed."""
        runs: dict[int, list[str]] = {}
        with self._lock:
            ordered = sorted(self.results, key=lambda r: r.started)
        for r in ordered:
            seq = runs.setdefault(r.client, [])
            if r.version and (not seq or seq[-1] != r.version):
                seq.append(r.version)
        return runs

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Block until at least `count` more answers have arrived (so the load really overlaps a step)."""
        target = len(self.results) + count
        deadline = time.monotonic() + timeout
        while len(self.results) < target and time.monotonic() < deadline:
            time.sleep(0.05)


def _answer(client: int, started: float, status: int, body: bytes) -> Answer:
    finished = time.monotonic()
    if status != 200:
        return Answer(client, started, finished, status, None, body[:300].decode("utf-8", "replace"))
    try:
        answer = json.loads(body)
    except ValueError as exc:
        return Answer(client, started, finished, 0, None, f"{type(exc).__name__}: a 200 that is not JSON: {body[:200]!r}")
    version = answer.get("version") if isinstance(answer, dict) else None
    return Answer(client, started, finished, status, None if version is None else str(version))
