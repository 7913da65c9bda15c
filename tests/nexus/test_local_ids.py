"""Local ids: unique, hex, and never repeated by user seeding or across a fork."""

from __future__ import annotations

import os
import random
import re

from nexus_bedrock_tasks.nexus.records import SpanRecord, new_local_id, utcnow


def test_ids_are_32_hex_digits_and_unique() -> None:
    ids = [new_local_id() for _ in range(20_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", local_id) for local_id in ids)
    assert len(set(ids)) == len(ids)
    assert SpanRecord("s", utcnow(), None).local_id != SpanRecord("s", utcnow(), None).local_id


def test_seeding_the_random_module_does_not_repeat_ids() -> None:
    random.seed(1234)
    first = new_local_id()
    random.seed(1234)
    assert new_local_id() != first


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then leave without running pytest's atexit
        os.close(read_end)
        os.write(write_end, " ".join(new_local_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write_end)
    parent = [new_local_id() for _ in range(3)]
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read().decode().split()
    os.waitpid(pid, 0)
    assert len(child) == 3 and not set(child) & set(parent)
