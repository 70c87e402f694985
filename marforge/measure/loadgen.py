"""A small asyncio HTTP/1.1 load generator: keep-alive connections, POSTed bodies, no dependencies.

One process, one event loop, raw streams: it costs far less CPU per request than a thread per
client with `requests`, so on a small machine the server, not the generator, is what is measured.
Every request has a timeout; a timeout or a broken connection is recorded as status 0.

    results = asyncio.run(run_load("http://127.0.0.1:8080/predictions/fashion", bodies,
                                   concurrency=16, seconds=10, headers={"Authorization": "Bearer ..."}))
"""

import asyncio
import itertools
import time
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


class _Connection:
    def __init__(self, host, port):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def request(self, head, body, timeout):
        if self.writer is None:
            self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout)
        self.writer.write(head + body)
        await self.writer.drain()
        return await asyncio.wait_for(self._read_response(), timeout)

    async def _read_response(self):
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
        if chunked:
            while (size := int((await self.reader.readline()).split(b";")[0], 16)):
                await self.reader.readexactly(size + 2)
            await self.reader.readline()
        elif length is not None:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_load(url, bodies, concurrency, seconds, headers=None, timeout=30.0, content_type="image/png"):
    """POST `bodies` (cycled) to `url` from `concurrency` keep-alive connections for `seconds`."""
    parts = urlsplit(url)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    heads = [(f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
              f"Content-Length: {len(b)}\r\n{extra}\r\n").encode() for b in bodies]
    requests_cycle = itertools.cycle(zip(heads, bodies))
    result = LoadResult(seconds)
    start = time.monotonic()
    deadline = start + seconds

    async def client():
        connection = _Connection(parts.hostname, parts.port or 80)
        while time.monotonic() < deadline:
            head, body = next(requests_cycle)
            t0 = time.monotonic()
            try:
                status = await connection.request(head, body, timeout)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
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
