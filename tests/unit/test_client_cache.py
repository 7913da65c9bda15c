"""The per-process Bedrock client cache: reuse, and a fresh client when it must not reuse."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from nexus_bedrock_tasks.bedrock.client import SERVICE, cached_client

ENDPOINT = "http://127.0.0.1:9"  # never contacted: no request is sent


def test_the_same_arguments_get_the_same_client() -> None:
    first = cached_client(region="eu-west-1", endpoint_url=ENDPOINT)
    assert cached_client(region="eu-west-1", endpoint_url=ENDPOINT) is first
    assert first.meta.service_model.service_name == SERVICE
    assert first.meta.region_name == "eu-west-1"
    assert first.meta.endpoint_url == ENDPOINT
    # botocore's own retries stay off in the shared client too.
    assert first.meta.config.retries["total_max_attempts"] == 1


def test_other_arguments_timeouts_or_aws_environment_get_another_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = cached_client(region="eu-west-1", endpoint_url=ENDPOINT)
    assert cached_client(region="eu-west-2", endpoint_url=ENDPOINT) is not base
    assert (
        cached_client(region="eu-west-1", endpoint_url=ENDPOINT, max_pool_connections=40)
        is not base
    )
    monkeypatch.setenv("NEXUS_BEDROCK_AWS_READ_TIMEOUT_S", "7")
    slow = cached_client(region="eu-west-1", endpoint_url=ENDPOINT)
    assert slow is not base
    assert slow.meta.config.read_timeout == 7
    monkeypatch.delenv("NEXUS_BEDROCK_AWS_READ_TIMEOUT_S")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLEROTATED00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "rotated-secret-for-the-test")
    assert cached_client(region="eu-west-1", endpoint_url=ENDPOINT) is not base


def test_a_forked_child_makes_its_own_client() -> None:
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    script = textwrap.dedent(
        f"""
        import os, sys
        from nexus_bedrock_tasks.bedrock.client import cached_client
        parent = cached_client(endpoint_url={ENDPOINT!r})
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            child = cached_client(endpoint_url={ENDPOINT!r})
            os.write(write, b"same" if child is parent else b"new")
            os._exit(0)
        os.waitpid(pid, 0)
        print(os.read(read, 10).decode())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "new"


def test_task_settings_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from nexus_bedrock_tasks.settings import task_settings

    monkeypatch.delenv("NEXUS_BEDROCK_STREAM_RETRIES", raising=False)
    first = task_settings()
    assert task_settings() is first
    monkeypatch.setenv("NEXUS_BEDROCK_STREAM_RETRIES", "5")
    changed = task_settings()
    assert changed is not first and changed.stream_retries == 5
    monkeypatch.delenv("NEXUS_BEDROCK_EVAL_RESULTS_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", "/tmp/elsewhere")
    assert str(task_settings().eval_results_dir).startswith("/tmp/elsewhere/")


def test_nexus_settings_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from nexus_bedrock_tasks.settings import nexus_settings

    monkeypatch.setenv("NEXUS_AGENT_ID", "first-agent")
    first = nexus_settings()
    assert nexus_settings() is first and first.agent_id == "first-agent"
    monkeypatch.setenv("NEXUS_AGENT_ID", "second-agent")
    assert nexus_settings().agent_id == "second-agent"
