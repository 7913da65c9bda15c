"""Local Nexus-compatible REST server with a small web UI.

- `testing.run_local_nexus(...)`: serve it on a free port for tests and benchmarks.
- `app.create_app(...)`: the FastAPI app (REST API, OTLP ingest, web page at `/`).
- `faults`: fault injection knobs (off unless enabled).
- `fast_path`: the write routes answered before FastAPI's middleware and routing (plain
  ASGI, same answers): the server's CPU per span.
- CLI: `nexus-bedrock local nexus [--port 8765] [--db FILE] [--api-key nxs_...]`.

The default key is `config.DEV_KEY` (``nxs_local_dev_key``). Importing this package stays
cheap: FastAPI and uvicorn load only with the modules that need them.
"""
