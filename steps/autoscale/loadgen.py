"""Staged streaming load: N concurrent clients on Triton's `generate_stream` (HTTP SSE), per stage.

Each stage holds its concurrency for its duration (ramp, hold, drop in the reference spec); clients
above the current concurrency wait for a later stage. The run is bounded by the total stage time and
`max_requests`; a request still streaming at the end is cut off at the deadline and recorded as an
error ("deadline"), so slow streams never extend the run. Every request is recorded: start, time to
first token, end, tokens streamed, error, stage, and the serving group when the server names it.
Requests follow the backend's contract (steps.contract): one SSE event is one generation step
whether the backend streams the new text or the whole text so far.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import aiohttp

from steps.contract import ENSEMBLE, Contract, contract_for
from workflows.spec import LoadStage, LoadTestSpec

# A response header a proxy or server may set to say which group answered; absent on plain Triton.
GROUP_HEADER = "x-megapod-group"
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards")


@dataclass
class RequestRecord:
    """One request as the client saw it; times are seconds since load start."""

    start_s: float
    stage: str
    worker: int
    ttft_s: float | None = None
    end_s: float | None = None
    tokens: int = 0
    error: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class LoadPlan:
    """What to send: stages, prompt and output length, and the bounds."""

    stages: tuple[LoadStage, ...]
    isl: int
    osl: int
    max_requests: int
    request_timeout_s: float | None = None  # default: the whole run is the only bound
    contract: Contract = ENSEMBLE

    @classmethod
    def from_spec(cls, loadtest: LoadTestSpec, backend: str) -> LoadPlan:
        """The plan the spec's loadtest section describes, in the contract of the spec's backend."""
        stages = tuple(loadtest.stages)
        return cls(stages, loadtest.isl, loadtest.osl, loadtest.max_requests, contract=contract_for(backend))

    @property
    def duration_s(self) -> float:
        return float(sum(stage.duration_s for stage in self.stages))

    @property
    def peak_concurrency(self) -> int:
        return max(stage.concurrency for stage in self.stages)

    def stage_at(self, elapsed_s: float) -> LoadStage | None:
        """The stage running `elapsed_s` after load start (None after the last)."""
        end = 0.0
        for stage in self.stages:
            end += stage.duration_s
            if elapsed_s < end:
                return stage
        return None


def prompt(isl: int) -> str:
    """A deterministic prompt of about `isl` tokens (one short word is about one token)."""
    return " ".join(WORDS[i % len(WORDS)] for i in range(isl))


def request_body(plan: LoadPlan) -> bytes:
    """The generate_stream JSON body (the contract pins the output length where the model can)."""
    return json.dumps(plan.contract.request(prompt(plan.isl), plan.osl, stream=True)).encode()


@dataclass
class LoadResult:
    """All records plus the wall-clock time the load started (epoch seconds)."""

    started_at: float
    records: list[RequestRecord] = field(default_factory=list)

    def rows(self) -> list[dict]:
        """Records as plain dicts with absolute times added (for requests.parquet)."""
        return [{**asdict(r), "start_time": self.started_at + r.start_s} for r in self.records]


class LoadGenerator:
    """Runs a LoadPlan against one Triton HTTP endpoint ("host:port")."""

    def __init__(self, url: str, plan: LoadPlan, *, clock: Callable[[], float] = time.monotonic,
                 on_stage: Callable[[LoadStage, float], None] | None = None) -> None:
        model = plan.contract.model
        self.endpoint = f"http://{url.removeprefix('http://')}/v2/models/{model}/generate_stream"
        self.plan = plan
        self.clock = clock
        self.on_stage = on_stage
        self.body = request_body(plan)
        self._active = 0
        self._changed = asyncio.Condition()
        self._sent = 0

    async def run(self) -> LoadResult:
        """Drive every stage, then return the records (in-flight requests are cut at the deadline)."""
        result = LoadResult(started_at=time.time())
        self._t0 = self.clock()
        deadline = self._t0 + self.plan.duration_s
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            workers = [asyncio.create_task(self._worker(i, session, result, deadline))
                       for i in range(self.plan.peak_concurrency)]
            schedule = asyncio.create_task(self._schedule())
            clients = asyncio.gather(*workers, return_exceptions=True)
            # Ends at the last stage's end, or earlier once every client has hit max_requests.
            await asyncio.wait({schedule, clients}, return_when=asyncio.FIRST_COMPLETED)
            for task in [schedule, *workers]:
                task.cancel()
            await asyncio.gather(schedule, clients, return_exceptions=True)
        result.records.sort(key=lambda r: r.start_s)
        return result

    async def _schedule(self) -> None:
        """Set the active concurrency at each stage boundary; return at the end of the last stage."""
        for stage in self.plan.stages:
            if self.on_stage:
                self.on_stage(stage, self.clock() - self._t0)
            async with self._changed:
                self._active = stage.concurrency
                self._changed.notify_all()
            await asyncio.sleep(max(0.0, self._t0 + self._stage_end(stage) - self.clock()))

    def _stage_end(self, stage: LoadStage) -> float:
        end = 0.0
        for s in self.plan.stages:
            end += s.duration_s
            if s is stage:
                return end
        raise ValueError(stage)

    async def _worker(self, index: int, session: aiohttp.ClientSession, result: LoadResult,
                      deadline: float) -> None:
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: index < self._active)
            if self._sent >= self.plan.max_requests or self.clock() >= deadline:
                return
            self._sent += 1
            record = RequestRecord(start_s=self.clock() - self._t0, stage=self._stage_name(), worker=index)
            result.records.append(record)
            to_deadline = deadline - self.clock()
            timeout = self.plan.request_timeout_s
            limit = to_deadline if timeout is None else min(to_deadline, timeout)
            try:
                await asyncio.wait_for(self._stream(session, record), timeout=max(limit, 0.001))
            except TimeoutError:
                # "deadline": cut off by the end of the run; "timeout": slower than the request bound
                record.error = "deadline" if limit == to_deadline else "timeout"
            except asyncio.CancelledError:
                record.error = "deadline"
                record.end_s = self.clock() - self._t0
                raise
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                record.error = f"{type(exc).__name__}: {exc}"[:300]
            record.end_s = self.clock() - self._t0

    def _stage_name(self) -> str:
        stage = self.plan.stage_at(self.clock() - self._t0)
        return stage.name if stage else self.plan.stages[-1].name

    async def _stream(self, session: aiohttp.ClientSession, record: RequestRecord) -> None:
        """POST one request and count SSE `data:` events (one per token); errors end the stream."""
        async with session.post(self.endpoint, data=self.body,
                                headers={"Content-Type": "application/json"}) as response:
            record.group = response.headers.get(GROUP_HEADER)
            if response.status != 200:
                text = (await response.text())[:200]
                record.error = f"HTTP {response.status}: {text}"
                return
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                if b'"error"' in line:
                    message = json.loads(line[5:]).get("error")
                    if message is not None:
                        record.error = str(message)[:300]
                        return
                if record.tokens == 0:
                    record.ttft_s = self.clock() - self._t0 - record.start_s
                record.tokens += 1


def run_load(url: str, plan: LoadPlan, **kwargs) -> LoadResult:
    """Blocking wrapper around LoadGenerator.run."""
    return asyncio.run(LoadGenerator(url, plan, **kwargs).run())
