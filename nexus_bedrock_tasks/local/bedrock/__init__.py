"""Local Bedrock Agent Runtime emulator, wire-compatible with stock boto3.

A stock ``bedrock-agent-runtime`` client talks to it through ``endpoint_url`` or
``AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME`` and gets the bytes AWS sends: event-stream
framing with CRCs, ``chunk``/``trace``/``returnControl`` events, in-stream exceptions as
``:message-type: exception`` messages, and JSON errors with ``x-amzn-ErrorType`` before the
stream. It never opens a connection; it only listens on its own socket.

Start it with ``nexus-bedrock local bedrock [--host] [--port 8766] [--agents FILE]
[--replay DIR]``, `testing.run_emulator` (a context manager yielding the URL),
the fixtures of `pytest_plugin`, or mount `app.create_app` in any ASGI server.

Where things are documented:

- agents file schema: `config`; the rule-based "model" and its answers: `planner`;
  retrieval and scores: `knowledge`; built-in Lambda handlers: `handlers`.
- token counts: ``ceil(len(text) / 4)`` of the prompt (input) and of the completion
  (output), see `traces`.
- faults and their ``x-emulator-*`` request headers (``x-emulator-step-latency-ms``,
  ``x-emulator-throttle-first``, ``x-emulator-error-first``, ``x-emulator-error-status``,
  ``x-emulator-stream-error-after``, ``x-emulator-stream-error``, ``x-emulator-drop-after``,
  ``x-emulator-trickle-bytes``, ``x-emulator-trickle-delay-ms``): `faults`.
- returnControl (parallel calls, API operations, ``responseState``) and its validation:
  `returncontrol`; several rounds (``then:``): `config`; sessions and memory: `sessions`;
  InvokeInlineAgent: `inline`; replaying recordings: `replay`; routes: `app`;
  sockets and background threads: `nexus_bedrock_tasks.local.serving`.

This package module imports nothing heavy, so the CLI can register the command cheaply.
"""
