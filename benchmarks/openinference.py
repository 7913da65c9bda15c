"""OpenInference's tracing cost per call: the baseline of `tracing_overhead_ratio`.

Run as ``python -m benchmarks.openinference ...`` (a child process, because the instrumentor
patches every botocore client created after it is installed). One stock boto3 client is
made before `BedrockInstrumentor().instrument()` (raw) and one after (instrumented); they
call the same agent in alternation. Spans go through the OTel SDK's `BatchSpanProcessor`
to the local Nexus's OTLP endpoint, which takes OTLP/HTTP *JSON* (the stock OTLP/HTTP
exporter sends protobuf), so `OtlpJsonSpanExporter` encodes with the stock encoder and
sends the JSON mapping of the same message. Prints one JSON line: the samples.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import httpx

from benchmarks.harness import Knobs, Services, plain_call, plain_client

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")
SERVICE_NAME = "bedrock-agent-openinference"


def _hex_ids(node: Any) -> None:
    """OTLP JSON carries ids as hex; protobuf's JSON mapping gives base64."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids(item)


def make_exporter(endpoint: str, api_key: str) -> Any:
    """An OTel `SpanExporter` posting OTLP/HTTP JSON to `endpoint` (``.../v1/traces``)."""
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class OtlpJsonSpanExporter(SpanExporter):
        def __init__(self) -> None:
            self._http = httpx.Client(timeout=10, headers={"x-api-key": api_key})
            self.exported = 0
            self.failures = 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            body = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
            _hex_ids(body)
            try:
                response = self._http.post(
                    endpoint,
                    content=json.dumps(body),
                    headers={"Content-Type": "application/json"},
                )
            except httpx.HTTPError:
                self.failures += 1
                return SpanExportResult.FAILURE
            if response.status_code != 200:
                self.failures += 1
                return SpanExportResult.FAILURE
            self.exported += len(spans)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            self._http.close()

    return OtlpJsonSpanExporter()


def _versions() -> dict[str, str]:
    names = ("openinference-instrumentation-bedrock", "opentelemetry-sdk")
    return {name: metadata.version(name) for name in names}


def measure(services: Services, rounds: int, warmup: int, step_latency_ms: float) -> dict[str, Any]:
    """Alternate raw and instrumented calls; seconds of each, and what was exported."""
    from openinference.instrumentation.bedrock import BedrockInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = make_exporter(f"{services.nexus_url}/v1/traces", services.api_key)
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    raw_client = plain_client(services.bedrock_url)
    instrumentor = BedrockInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    instrumented_client = plain_client(services.bedrock_url)
    if not hasattr(instrumented_client, "_unwrapped_invoke_agent") or hasattr(
        raw_client, "_unwrapped_invoke_agent"
    ):
        raise RuntimeError("the instrumentor did not wrap exactly the second client")
    knobs = Knobs(services)

    def call(client: Any) -> tuple[float, float]:
        """Wall seconds of the call; CPU seconds of the call and its export."""
        session_id = knobs.new_session(step_latency_ms)
        cpu, started = time.process_time(), time.perf_counter()
        plain_call(client, session_id)
        elapsed = time.perf_counter() - started
        provider.force_flush(30_000)
        return elapsed, time.process_time() - cpu

    samples: dict[str, list[float]] = {
        "raw": [],
        "instrumented": [],
        "raw_cpu": [],
        "instrumented_cpu": [],
    }
    clients = {"raw": raw_client, "instrumented": instrumented_client}
    for number in range(warmup + rounds):
        order = ["raw", "instrumented"] if number % 2 == 0 else ["instrumented", "raw"]
        for name in order:
            wall, cpu = call(clients[name])
            if number >= warmup:
                samples[name].append(wall)
                samples[f"{name}_cpu"].append(cpu)
    provider.force_flush(30_000)
    instrumentor.uninstrument()
    provider.shutdown()
    knobs.close()
    return {
        **samples,
        "spans_exported": exporter.exported,
        "export_failures": exporter.failures,
        "versions": _versions(),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: measure and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bedrock-url", required=True)
    parser.add_argument("--nexus-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--step-latency-ms", type=float, default=200)
    args = parser.parse_args(argv)
    services = Services(
        bedrock_url=args.bedrock_url,
        nexus_url=args.nexus_url,
        api_key=args.api_key,
        faults_nexus_url=args.nexus_url,
        prefect="unused",
    )
    try:
        answer = measure(services, args.rounds, args.warmup, args.step_latency_ms)
    except ImportError as exc:
        print(
            f"{exc.name} is not installed: pip install -e '.[bench]' "
            "(openinference-instrumentation-bedrock, opentelemetry-sdk, "
            "opentelemetry-exporter-otlp-proto-common)",
            file=sys.stderr,
        )
        return 3
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
