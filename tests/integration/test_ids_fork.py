"""Random endpoint ids come from a buffer of the OS CSPRNG's bytes: a forked child must not hand
out the ids its parent has still to hand out."""

from __future__ import annotations

import os

from rendezvous.core.ids import random_ids


def test_a_forked_child_does_not_repeat_its_parents_ids():
    ids = random_ids()
    ids()  # the buffer is filled, and most of it is still to be handed out
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, "".join(ids() for _ in range(10)).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 1000).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = "".join(ids() for _ in range(10))
    assert len(child) == len(parent) == 320
    assert {child[i:i + 32] for i in range(0, 320, 32)}.isdisjoint({parent[i:i + 32] for i in range(0, 320, 32)})
