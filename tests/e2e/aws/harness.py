"""Bunsui's stack on a moto server, with the parts of AWS that moto does not play played here.

:class:`AwsHarness` starts a ``ThreadedMotoServer`` on 127.0.0.1 (a free port,
one per process, reset for each harness), points this process's boto3 at it
(``AWS_ENDPOINT_URL``, fake credentials, us-east-1) and creates the stack from
``template.yaml`` itself (:mod:`tests.e2e.aws.stack`): the table from its own
properties (``engine.aws.table.create_table``: keys, indexes, stream, TTL),
the KMS key, the Bunsui bus, the
output bucket, the schedule group, the dead-letter queues; the functions'
environment is the template's, resolved. For every ``EventBridgeRule`` event of
every function (the reducer's seven), it creates a rule with that exact
pattern on that bus whose target is an SQS queue the harness drains: moto
delivers EventBridge to SQS and matches the patterns, so the template's
patterns are what decides which events reach the reducer.

What moto does not do, and the harness does instead:

- **Lambda's asynchronous invoke and destinations.** moto's ``Invoke`` needs
  Docker and never emits destination records. A botocore ``before-call`` hook
  (:mod:`tests.e2e.aws.calls`) answers the dispatcher's ``Invoke`` (202); the
  function's handler, found by the local backend's resolver, runs later, and
  its ``Lambda Function Invocation Result - Success/Failure`` record goes on
  the DEFAULT bus (:mod:`tests.e2e.aws.services`).
- **ECS running tasks.** moto records ``RunTask`` and ``StopTask`` but runs no
  container and emits no events. The harness runs the task's command (the
  local mapping's, with the task definition's and the overrides'
  environment; the job writes ``BUNSUI_OUTPUT`` to moto's S3), stops the task
  in moto and puts ``ECS Task State Change`` (STOPPED, exit codes) on the
  default bus; a task Bunsui stopped ends ``UserInitiated``.
- **EventBridge Scheduler firing.** moto stores schedules and never fires
  them. When nothing else is left to do, the harness advances its clock to
  the earliest ``at(...)`` schedule of the group, puts its target event on
  the bus (source and detail-type from ``EventBridgeParameters``, detail =
  ``Input``) and deletes it (``ActionAfterCompletion: DELETE``).
- **EventBridge -> Lambda targets.** moto delivers to SQS only; the harness
  drains the rules' queues and calls the target function's handler in this
  process, one event per invocation, optionally each event twice (the copies
  shuffled apart, or side by side) and in a shuffled order (EventBridge
  delivers at least once, in no order), and optionally from several threads
  at once (``workers``): Lambda runs a function's invocations concurrently,
  each in its own container, so each worker thread is one container with its
  own engine (its own clients and caches), built as the handler builds it.
- **DynamoDB Streams -> Lambda.** moto keeps the stream records but invokes
  nothing without Docker; the harness reads them and calls the consumer
  (``handlers.history``) with Lambda's stream event shape, in the mapping's
  batch size, after the mapping's ``FilterCriteria``.
- **API Gateway.** :class:`tests.e2e.aws.gateway.ApiGateway` with the routes
  of ``ApiFunction``'s ``HttpApi`` events; :meth:`AwsHarness.api` signs
  requests with SigV4.

With workers, moto's backends apply one request at a time: moto takes no lock
of its own, so two threads' conditional writes to one item could both pass
their condition, which DynamoDB never lets happen (it applies each request to
an item atomically), and a request can even fail on a dictionary another
thread changes. Reducers still interleave between requests, where their races
are.

Every AWS request of every client in the process is counted per actor
(``api``, ``reducer``, ``history``, ``sweeper``, ``start``, ``harness``, ``job``),
service and operation: :attr:`AwsHarness.calls`.

Speed, so that a 1,000-job session takes a minute rather than ten: requests of
this process reach moto's backends without the HTTP round trip
(:mod:`tests.e2e.aws.direct`; the server still serves the CLI and the jobs'
own processes, on the same state); moto keeps no copy of every item it
ever wrote (:mod:`tests.e2e.aws.untrack`); the rules' queues are
drained after every ``PutEvents`` (moto's ``ReceiveMessage`` looks at every
message of a queue); the stream's records are read from moto's table, as
Lambda's poller reads a shard, not through ``GetRecords``, which would
serialize each record through the API model.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import os
import random
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto.dynamodb.models import dynamodb_backends
from moto.dynamodb.models.utilities import dynamo_json_dump
from moto.events.models import EventPattern
from moto.server import ThreadedMotoServer

from engine.local import lambda_host
from tests.e2e.aws import direct as direct_transport
from tests.e2e.aws.calls import Calls
from tests.e2e.aws.gateway import ApiGateway
from tests.e2e.aws.services import EcsPlayer, Invocation, JobCode, LambdaPlayer, Task
from tests.e2e.aws.stack import (
    ACCOUNT,
    REGION,
    Function,
    Rule,
    StreamConsumer,
    Template,
    deploy,
)
from tests.e2e.aws.untrack import untrack

ROOT = Path(__file__).resolve().parents[3]
TEMPLATE = ROOT / "template.yaml"
CREDENTIALS = Credentials("testing", "testing")
PROJECT_EVERY = 50
"""Deliveries between two readings of the stream within one round: moto keeps each change's
images until they are read, and a 10,000-item round would otherwise hold them all."""
WHOLE_EVENT = {"InputPathsMap": {}, "InputTemplate": "<aws.events.event.json>"}
_AT = re.compile(r"at\((\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\)")

_server: ThreadedMotoServer | None = None
_endpoint = ""
_moto_lock = threading.RLock()
"""Held while moto's backends apply one in-process request (see :func:`_one_request_at_a_time`)."""


def moto_endpoint() -> str:
    """The moto server of this process (started on first use, on a free port of 127.0.0.1).

    One per process: moto keeps its state in module globals, so two servers
    would share it anyway; each harness resets it instead.
    """
    global _server, _endpoint
    if _server is None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        _server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        _server.start()
        host, port = _server.get_host_and_port()
        _endpoint = f"http://{host}:{port}"
    return _endpoint


def _one_request_at_a_time() -> None:
    """Make moto's backends apply each in-process request whole before the next one starts.

    DynamoDB applies a request to an item atomically; moto checks a condition and then
    writes, with no lock between, so two threads could both pass one condition. Requests
    from this process reach moto through :mod:`tests.e2e.aws.direct`'s stubber, so it is
    wrapped once; an uncontended lock costs nothing to a single thread.
    """
    stubber = direct_transport._stubber
    if getattr(stubber, "bunsui_one_at_a_time", False):
        return
    apply = stubber.process_request

    def process_request(request: Any) -> Any:
        with _moto_lock:
            return apply(request)

    stubber.process_request = process_request  # type: ignore[method-assign]
    stubber.bunsui_one_at_a_time = True  # type: ignore[attr-defined]


def item_bytes(image: Mapping[str, Any]) -> int:
    """An item's size as DynamoDB counts it, near enough: each attribute's name and value in
    UTF-8, a number one byte per two digits plus one, 3 bytes of a map or list plus 1 an
    element."""
    return sum(len(name.encode()) + _value_bytes(value) for name, value in image.items())


def _value_bytes(value: Mapping[str, Any]) -> int:
    ((kind, data),) = value.items()
    if kind == "S":
        return len(data.encode())
    if kind == "N":
        return (len(data.lstrip("-").replace(".", "")) + 1) // 2 + 1
    if kind == "B":
        return len(base64.b64decode(data))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "NS", "BS"):
        single = kind[0]
        return sum(_value_bytes({single: item}) for item in data)
    if kind == "M":
        return 3 + sum(len(k.encode()) + _value_bytes(v) + 1 for k, v in data.items())
    return 3 + sum(_value_bytes(v) + 1 for v in data)  # L


def _forget_engine() -> None:
    """Drop the engine a handler module kept from an earlier harness (its settings name the
    resources of a stack that a reset removed)."""
    service = sys.modules.get("engine.aws.service")
    cached = getattr(service, "lambda_engine", None)
    if cached is not None and hasattr(cached, "cache_clear"):
        cached.cache_clear()


class Clients:
    """The harness's own boto3 clients (counted as ``harness``)."""

    def __init__(self) -> None:
        self._session = boto3.session.Session()
        self._made: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._made:
            self._made[name] = self._session.client(name)
        return self._made[name]


@dataclass
class Queue:
    rule: Rule
    url: str


@dataclass
class Consumer:
    spec: StreamConsumer
    table: str
    filters: list[EventPattern]
    position: int = 0
    """How many of the stream's records were read."""


class HarnessError(AssertionError):
    """A handler failed where AWS would retry or dead-letter the event (tests must not see one)."""


class AwsHarness:
    """Bunsui's stack on moto, with Lambda, ECS, Scheduler and the targets played here.

    Args:
        sources: Where users' functions and tasks are found (first match wins).
        template: Bunsui's template.
        stack: The stack name (names the generated resources).
        duplicates: Deliver every bus event twice.
        together: With ``duplicates``, deliver an event's two copies one right after the
            other (with ``workers``: to two containers at the same moment), the pairs in
            shuffled order when ``seed`` is given; otherwise the copies are shuffled apart.
        seed: Shuffle the events of each delivery round with this seed (None: in order).
        workers: Invocations of a rule's function at once: each event of a delivery round
            goes to the next free one of ``workers`` threads, each a Lambda container with
            its own engine (1: one after another, in the calling thread).
        logs: Write jobs' output to moto's CloudWatch Logs (process-mode Lambda, ECS).
        quiet: Keep the handlers' logs at WARNING and their metrics off.
        direct: Answer this process's requests from moto's backends without HTTP
            (:mod:`tests.e2e.aws.direct`; the same state, four times faster); other
            processes always use the server.
    """

    def __init__(
        self,
        sources: Sequence[JobCode] = (),
        *,
        template: Path = TEMPLATE,
        stack: str = "e2e",
        duplicates: bool = False,
        together: bool = False,
        seed: int | None = None,
        workers: int = 1,
        logs: bool = False,
        quiet: bool = True,
        direct: bool = True,
    ) -> None:
        self.sources = list(sources)
        self.template_path = template
        self.stack = stack
        if workers < 1:
            raise ValueError(f"workers is at least 1, not {workers}")
        self.duplicates = duplicates
        self.together = together
        self.random = random.Random(seed) if seed is not None else None
        self.workers = workers
        self.peak_concurrency = 0
        """The most invocations that were in flight at once (in any delivery round)."""
        self.logs = logs
        self.quiet = quiet
        self.endpoint = moto_endpoint()
        attach = (lambda client: direct_transport.attach(client, self.endpoint)) if direct else None
        self.calls = Calls(on_client=attach)
        self.delivered: list[tuple[str, dict[str, Any]]] = []
        self._saved_env: dict[str, str | None] = {}
        self._offset = timedelta(0)
        self._handlers: dict[str, Callable[..., Any]] = {}
        self._network: dict[str, list[str]] | None = None
        self._inbox: list[tuple[Queue, dict[str, Any]]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0
        self._container = threading.local()
        self._flight = threading.Lock()
        self._in_flight = 0
        self._handled = 0
        self._projecting = threading.Lock()
        self.write_units: Counter[str] = Counter()
        """DynamoDB write units of the table's changes: ``state`` (sessions, runs...) and
        ``history`` items, from the stream's images (see :func:`item_bytes`)."""

    # ------------------------------------------------------------ life

    def __enter__(self) -> AwsHarness:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> AwsHarness:
        endpoint = self.endpoint
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
        untrack()
        _one_request_at_a_time()
        self._set_env(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": CREDENTIALS.access_key,
                "AWS_SECRET_ACCESS_KEY": CREDENTIALS.secret_key,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
                "AWS_PROFILE": None,
                "AWS_SESSION_TOKEN": None,
            }
        )
        self.calls.install()
        self.aws = Clients()
        self.template = Template(self.template_path, self.stack)
        deploy(self.template, self.aws)
        self.functions = {f.logical: f for f in self.template.functions()}
        self._set_env({k: v for f in self.functions.values() for k, v in f.environment.items()})
        if self.quiet:  # thousands of invocations: their INFO lines and metrics are noise here
            self._set_env(
                {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}
            )
        _forget_engine()
        self.queues = [self._rule(rule) for rule in self.template.rules()]
        self.consumers = [self._consumer(spec) for spec in self.template.stream_consumers()]
        self.lambda_ = LambdaPlayer(self.sources, self.aws.logs if self.logs else None)
        self.ecs = EcsPlayer(self.sources, self.aws.ecs, self.aws.logs if self.logs else None)
        self.calls.intercept[("lambda", "Invoke")] = self.lambda_.invoke
        self.calls.observe[("ecs", "RunTask")] = self.ecs.ran
        self.calls.observe[("ecs", "StopTask")] = self.ecs.stopping
        api = self._function_with("handlers.api")
        self.gateway = ApiGateway(
            self._handler(api), secret_key=CREDENTIALS.secret_key, routes=self._routes(api)
        ).start()
        return self

    def stop(self) -> None:
        self._close_containers()
        gateway = getattr(self, "gateway", None)
        if gateway is not None:
            gateway.stop()
        self.calls.uninstall()
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()

    def _set_env(self, values: Mapping[str, str | None]) -> None:
        for name, value in values.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def env(self, name: str) -> str:
        """A variable the template gives the functions (``BUNSUI_TABLE``...)."""
        return os.environ[name]

    # ------------------------------------------------------------ the stack

    def _rule(self, rule: Rule) -> Queue:
        name = f"{self.stack}-{rule.name}"[:80]
        url = self.aws.sqs.create_queue(QueueName=name)["QueueUrl"]
        queue_arn = self.aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.aws.events.put_rule(
            Name=rule.name, EventBusName=rule.bus, EventPattern=json.dumps(rule.pattern)
        )
        target: dict[str, Any] = {
            "Id": "harness-queue",
            "Arn": queue_arn,
            # The whole event, as EventBridge hands a target: moto's default target input
            # leaves out ``account`` (and the reducer's envelope model requires it).
            "InputTransformer": rule.input_transformer or WHOLE_EVENT,
        }
        self.aws.events.put_targets(Rule=rule.name, EventBusName=rule.bus, Targets=[target])
        return Queue(rule, url)

    def _consumer(self, spec: StreamConsumer) -> Consumer:
        table = self.template.resources[spec.table].ref
        filters = [EventPattern(json.dumps(p), p) for p in spec.filters]
        return Consumer(spec, table, filters)

    def deploy_user_stack(
        self, template: Path, parameters: Mapping[str, Any] | None = None, stack: str = "jobs"
    ) -> Template:
        """Create what a user's own template holds that moto keeps (buckets, ECS clusters
        and task definitions, log groups): the resources their jobs name."""
        user = Template(template, stack, parameters)
        deploy(user, self.aws)
        return user

    def network(self) -> dict[str, list[str]]:
        """A VPC subnet and security group for Fargate tasks (awsvpc needs them), as a
        job's ``network_configuration``; made once per harness."""
        if self._network is None:
            ec2 = self.aws.ec2
            vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
            # A task's network interface gets a DNS name, as in a default VPC.
            ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
            subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
            group = ec2.create_security_group(
                GroupName="jobs", Description="Bunsui jobs", VpcId=vpc
            )["GroupId"]
            self._network = {"subnets": [subnet], "security_groups": [group]}
        return self._network

    def _function_with(self, handler_module: str) -> Function:
        for function in self.functions.values():
            if function.handler and function.handler.rpartition(".")[0] == handler_module:
                return function
        raise HarnessError(f"no function of {self.template_path.name} runs {handler_module}")

    def _handler(self, function: Function) -> Callable[..., Any]:
        if function.logical not in self._handlers:
            assert function.handler is not None
            module, _, name = function.handler.rpartition(".")
            self._handlers[function.logical] = getattr(importlib.import_module(module), name)
        return self._handlers[function.logical]

    def _routes(self, function: Function) -> list[str]:
        spec = self.template.resources_spec[function.logical]
        events = (spec.get("Properties") or {}).get("Events") or {}
        return [
            f"{e['Properties']['Method'].upper()} {e['Properties']['Path']}"
            for e in events.values()
            if e.get("Type") == "HttpApi"
        ]

    def invoke(self, logical: str, event: Any) -> Any:
        """Call a function of the stack with ``event``, as Lambda would (in this process)."""
        function = self.functions[logical]
        context = lambda_host.LambdaContext(
            function.name, 512, str(uuid.uuid4()), time.time() + 300
        )
        return self._handler(function)(event, context)

    # ------------------------------------------------------------ time

    def now(self) -> datetime:
        """The harness's clock: the wall clock, moved ahead by every timer fired early."""
        return datetime.now(UTC) + self._offset

    def reset_clock(self) -> None:
        """Back to the wall clock (a new test's sessions need not live in an earlier test's
        future; the API stamps sessions with the wall clock)."""
        self._offset = timedelta(0)

    # ------------------------------------------------------------ plays

    def deliver(self) -> int:
        """Hand each event the rules' queues received to its rule's function; how many."""
        self._collect()
        batch, self._inbox = self._inbox, []
        if self.duplicates and self.together:
            if self.random is not None:
                self.random.shuffle(batch)
            batch = [copy for pair in zip(batch, batch, strict=True) for copy in pair]
        else:
            if self.duplicates:
                batch = batch + batch
            if self.random is not None:
                self.random.shuffle(batch)
        if self.workers > 1 and len(batch) > 1:
            self._deliver_at_once(batch)
            return len(batch)
        for count, (queue, event) in enumerate(batch, 1):
            if count % PROJECT_EVERY == 0:
                self.project()  # the stream's consumer keeps up, as on AWS
            self._deliver_one(queue, event)
        return len(batch)

    def _deliver_one(self, queue: Queue, event: dict[str, Any]) -> None:
        self.delivered.append((queue.rule.name, event))
        try:
            self.invoke(queue.rule.function, event)
        except Exception as exc:
            raise HarnessError(
                f"{queue.rule.function} raised on {event.get('detail-type')}: {exc!r}"
            ) from exc

    # ------------------------------------------------------------ concurrent invocations

    def _deliver_at_once(self, batch: list[tuple[Queue, dict[str, Any]]]) -> None:
        """Every event of the round to the worker threads (Lambda's containers), all queued
        at once; returns when all are handled, raising the first handler's failure."""
        pool = self._containers()
        functions = [self.functions[name] for name in {queue.rule.function for queue, _ in batch}]
        for function in functions:
            self._handler(function)  # imported before its engine() is pointed elsewhere
        modules = {str(function.handler).rpartition(".")[0] for function in functions}
        saved = self._use_container_engines(modules)
        try:
            futures = [pool.submit(self._deliver_in_container, q, e) for q, e in batch]
            wait(futures)
        finally:
            for module, engine in saved.items():
                sys.modules[module].engine = engine  # type: ignore[attr-defined]
        for future in futures:
            future.result()

    def _containers(self) -> ThreadPoolExecutor:
        """The worker threads (kept between rounds: warm containers keep their engines)."""
        if self._pool is None or self._pool_size != self.workers:
            self._close_containers()
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="container")
            self._pool_size = self.workers
        return self._pool

    def _close_containers(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._container = threading.local()

    def _use_container_engines(self, modules: set[str]) -> dict[str, Any]:
        """Point the handler modules' ``engine()`` at the calling thread's container engine;
        what it was before, to put back."""
        saved: dict[str, Any] = {}
        for name in modules:
            module = sys.modules[name]
            if callable(getattr(module, "engine", None)):
                saved[name] = module.engine
                module.engine = self._container_engine  # type: ignore[attr-defined]
        return saved

    def _container_engine(self) -> Any:
        """This thread's engine, made on its first invocation as a container makes it."""
        engine = getattr(self._container, "engine", None)
        if engine is None:
            service = importlib.import_module("engine.aws.service")
            engine = self._container.engine = service.AwsEngine.from_env()
        return engine

    def _deliver_in_container(self, queue: Queue, event: dict[str, Any]) -> None:
        with self._flight:
            self._in_flight += 1
            self.peak_concurrency = max(self.peak_concurrency, self._in_flight)
        try:
            self._deliver_one(queue, event)
        finally:
            with self._flight:
                self._in_flight -= 1
                self._handled += 1
                due = self._handled % PROJECT_EVERY == 0
        # The stream's consumer keeps up beside the reducers, one poller at a time.
        if due and self._projecting.acquire(blocking=False):
            try:
                self._project()
            finally:
                self._projecting.release()

    def _collect(self) -> None:
        """Move what the rules' queues hold to the inbox (often: moto's ReceiveMessage looks
        at every message of a queue, so a long queue makes every receive slow)."""
        for queue in self.queues:
            for body in self._drain(queue.url):
                event = json.loads(body)
                event.pop("ingestion-time", None)  # moto's own field, not EventBridge's
                self._inbox.append((queue, event))

    def _drain(self, url: str) -> Iterator[str]:
        while True:
            reply = self.aws.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=600
            )
            messages = reply.get("Messages") or []
            if not messages:
                return
            self.aws.sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )
            yield from (m["Body"] for m in messages)

    def run_jobs(self) -> int:
        """Run the jobs started so far (not held); put their completion events; how many."""
        events: list[dict[str, Any]] = []
        invocations: list[Invocation] = self.lambda_.take()
        for invocation in invocations:
            events.append(self.lambda_.run(invocation, self.now()))
        tasks, stopped = self.ecs.take()
        for task in tasks:
            events.append(self.ecs.run(task, self.now()))
        for task in stopped:
            events.append(self.ecs.stopped_event(task, self.now()))
        self.put_events(events)
        return len(events)

    def put_events(self, events: Sequence[Mapping[str, Any]]) -> None:
        """PutEvents in batches of ten (AWS's limit); every entry must be accepted."""
        for start in range(0, len(events), 10):
            reply = self.aws.events.put_events(Entries=list(events[start : start + 10]))
            if reply.get("FailedEntryCount"):
                raise HarnessError(f"PutEvents refused entries: {reply['Entries']}")
            self._collect()

    def project(self) -> int:
        """Feed new stream records to their consumers (the history projector); how many."""
        with self._projecting:
            return self._project()

    def _project(self) -> int:
        moved = 0
        for consumer in self.consumers:
            records = self._stream_records(consumer)
            if consumer.filters:
                records = [r for r in records if any(f.matches_event(r) for f in consumer.filters)]
            size = consumer.spec.batch_size
            for start in range(0, len(records), size):
                reply = self.invoke(
                    consumer.spec.function, {"Records": records[start : start + size]}
                )
                failures = (
                    (reply or {}).get("batchItemFailures") if isinstance(reply, dict) else None
                )
                if failures:
                    raise HarnessError(f"{consumer.spec.function} failed items {failures}")
            moved += len(records)
        return moved

    def _stream_records(self, consumer: Consumer) -> list[dict[str, Any]]:
        """The stream's new records, read from moto's table as Lambda's poller reads a shard
        (``GetRecords`` would serialize each record through the API model: ~1 ms a record)."""
        table = dynamodb_backends[ACCOUNT][REGION].get_table(consumer.table)
        shard = table.stream_shard
        if shard is None:
            return []
        with _moto_lock:  # reducers may be writing (workers)
            start = consumer.position
            fresh = shard.items[start:]
            consumer.position += len(fresh)
            # moto keeps every record with both images for ever (a 10,000-item session's
            # would fill the memory); read ones are dropped in place, so positions and
            # sequence numbers stay as they are (one consumer reads a table's stream here).
            for index in range(start, start + len(fresh)):
                shard.items[index] = None
        source = f"{table.table_arn}/stream/{table.latest_stream_label}"
        records = []
        for item in fresh:
            record = json.loads(dynamo_json_dump(item.to_json()))
            change = record["dynamodb"]
            self._bill(change)
            created = item.record["dynamodb"].get("ApproximateCreationDateTime")
            if isinstance(created, datetime):
                change["ApproximateCreationDateTime"] = created.replace(tzinfo=UTC).timestamp()
            records.append({**record, "eventSourceARN": source})
        return records

    def _bill(self, change: Mapping[str, Any]) -> None:
        """Add a change's write units: 1 a KB of the larger of its images, as DynamoDB bills a
        write (a write whose condition failed costs units too but leaves no record)."""
        size = max(
            item_bytes(change.get("OldImage") or {}), item_bytes(change.get("NewImage") or {})
        )
        sort_key = (change.get("Keys") or {}).get("sk", {}).get("S", "")
        kind = "history" if sort_key.startswith("H#") else "state"
        self.write_units[kind] += max(1, -(-size // 1024))

    def schedules(self) -> list[dict[str, Any]]:
        """The schedules of the stack's group, each as GetSchedule describes it."""
        group = self.env("BUNSUI_SCHEDULE_GROUP")
        found = []
        for page in self.aws.scheduler.get_paginator("list_schedules").paginate(GroupName=group):
            for item in page.get("Schedules", []):
                found.append(self.aws.scheduler.get_schedule(GroupName=group, Name=item["Name"]))
        return found

    def fire_timers(self) -> int:
        """Advance the clock to the earliest one-time schedule and fire every one due then."""
        due = []
        for schedule in self.schedules():
            matched = _AT.fullmatch(schedule.get("ScheduleExpression", ""))
            if matched:
                due.append((datetime.fromisoformat(matched[1]).replace(tzinfo=UTC), schedule))
        if not due:
            return 0
        earliest = min(at for at, _ in due)
        if earliest > self.now():
            self._offset += earliest - self.now()
        fired = [s for at, s in due if at <= earliest]
        for schedule in fired:
            self.fire(schedule, earliest)
        return len(fired)

    def fire(self, schedule: Mapping[str, Any], at: datetime | None = None) -> None:
        """What Scheduler does when ``schedule`` is due: its target's event or invocation."""
        target = schedule["Target"]
        bridge = target.get("EventBridgeParameters")
        if bridge is not None:
            entry = {
                "Source": bridge["Source"],
                "DetailType": bridge["DetailType"],
                "Detail": target.get("Input") or "{}",
                "EventBusName": target["Arn"],
                "Time": at or self.now(),
            }
            self.put_events([entry])
        else:
            function = next(f for f in self.functions.values() if target["Arn"].endswith(f.name))
            self.invoke(function.logical, json.loads(target.get("Input") or "{}"))
        if schedule.get("ActionAfterCompletion") == "DELETE":
            self.aws.scheduler.delete_schedule(
                GroupName=schedule["GroupName"], Name=schedule["Name"]
            )

    def sweep(self) -> Any:
        """One run of the sweeper, as its rate schedule would start it."""
        return self.invoke(self._function_with("handlers.sweeper").logical, {})

    def settle(
        self,
        timers: bool = True,
        until: Callable[[], bool] | None = None,
        max_rounds: int = 100_000,
    ) -> int:
        """Play until nothing moves (or ``until`` says so): deliver, run jobs, project the
        stream; when all is quiet and ``timers``, fire the next timers. Rounds played."""
        for rounds in range(1, max_rounds + 1):
            moved = self.deliver() + self.run_jobs() + self.project()
            if until is not None and until():
                return rounds
            if moved:
                continue
            if timers and self.fire_timers():
                continue
            return rounds
        raise HarnessError(f"still moving after {max_rounds} rounds")

    # ------------------------------------------------------------ holding jobs

    def hold(self, *names: str) -> None:
        """Start these functions and task families, but let them never finish (until released)."""
        for name in names:
            self.lambda_.holds.add(name)
            self.ecs.holds.add(name)

    def release(self, *names: str) -> int:
        return sum(self.lambda_.release(n) + self.ecs.release(n) for n in names)

    @property
    def held_tasks(self) -> list[Task]:
        return list(self.ecs.held)

    # ------------------------------------------------------------ the API

    @property
    def api_url(self) -> str:
        return self.gateway.url

    def api(
        self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None
    ) -> tuple[int, Any]:
        """One SigV4-signed request to the API (as the CLI sends it); status and JSON body."""
        url = self.api_url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else b""
        request = AWSRequest(
            method=method,
            url=url,
            data=data,
            headers={"content-type": "application/json"} if body is not None else {},
        )
        SigV4Auth(CREDENTIALS, "execute-api", REGION).add_auth(request)
        prepared = urllib.request.Request(
            url, data=data or None, method=method, headers=dict(request.headers.items())
        )
        try:
            with urllib.request.urlopen(prepared, timeout=60) as reply:
                status, text = reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read()
        return status, json.loads(text) if text else None

    # ------------------------------------------------------------ users' functions

    def destination_problems(self, functions: set[str] | None = None) -> list[str]:
        """Functions Bunsui invoked (of ``functions``, None: all) whose template does not send
        both results to the default bus with no Lambda retries (on AWS their results would
        never come back, or come back for runs Bunsui does not know)."""
        default = f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/default"
        problems = []
        checked: set[str] = set()
        for invocation in self.lambda_.invoked:
            if invocation.function in checked or (
                functions is not None and invocation.function not in functions
            ):
                continue
            checked.add(invocation.function)
            path = invocation.source.resolver.template_path
            found = None
            if path is not None:
                functions = Template(path, "jobs").functions()
                found = next((f for f in functions if f.name == invocation.function), None)
            if found is None:
                problems.append(f"{invocation.function}: not in a template")
                continue
            wrong = [
                outcome for outcome in ("OnSuccess", "OnFailure")
                if found.destinations.get(outcome) != default
            ]  # fmt: skip
            if wrong:
                problems.append(f"{invocation.function}: {'/'.join(wrong)} is not the default bus")
            if found.maximum_retry_attempts != 0:
                problems.append(f"{invocation.function}: MaximumRetryAttempts is not 0")
        return problems
