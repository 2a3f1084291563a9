"""The process's runtime: resources made on first use, replaced by fakes, closed together,
never shared with (or closed by) a forked child."""

from __future__ import annotations

import os

from shared.runtime import Resource, Runtime, reset_runtime, runtime


class Thing:
    made = 0

    def __init__(self, name: str, closed: list[str]) -> None:
        Thing.made += 1
        self.name, self.closed = name, closed

    def close(self) -> None:
        self.closed.append(self.name)


def _resource(name: str, closed: list[str]) -> Resource[Thing]:
    return Resource(name, make=lambda: Thing(name, closed), close=Thing.close)


def test_a_resource_is_made_once_on_first_use_and_closed_in_reverse_order() -> None:
    closed: list[str] = []
    first, second = _resource("first", closed), _resource("second", closed)
    rt = Runtime()
    assert rt.peek(first) is None
    made_before = Thing.made
    assert rt.get(first) is rt.get(first)
    rt.get(second)
    assert Thing.made == made_before + 2
    rt.close()
    assert closed == ["second", "first"]
    assert rt.peek(first) is None  # a later get makes a new one


def test_an_installed_value_replaces_the_one_made_which_is_closed() -> None:
    closed: list[str] = []
    thing = _resource("thing", closed)
    rt = Runtime()
    made = rt.get(thing)
    fake = Thing("fake", closed)
    rt.install(thing, fake)
    assert closed == ["thing"]
    assert rt.get(thing) is fake and made is not fake
    rt.discard(thing)
    assert closed == ["thing", "fake"]


def test_a_forked_child_gets_its_own_runtime_and_never_closes_its_parents() -> None:
    closed: list[str] = []
    thing = _resource("parent's", closed)
    parent = runtime()
    parents = parent.get(thing)
    parents.name = "the parent's own"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            child = runtime()
            mine = child.get(thing)
            mine.name = "the child's own"
            reset_runtime()  # closes what the child made, never what it inherited
            os.write(write_end, f"{child is not parent}|{closed}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report = pipe.read()
    os.waitpid(pid, 0)
    assert report == 'True|["the child\'s own"]'
    assert closed == []
    assert runtime() is parent and parent.get(thing) is parents
    parent.discard(thing)
    assert closed == ["the parent's own"]
