"""A small TCP proxy on loopback that can reset every connection passing through it.

The workers of the fault suite reach Postgres and Redis through one of these each; a test
calls ``reset_all()`` to cut every open connection with a TCP RST, mid-query or mid-command,
as a flaky network or a load balancer's idle cut does.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field

from tests.faults.servers import free_port


def _hard_close(sock: socket.socket) -> None:
    # SO_LINGER with a zero timeout: the last close sends RST instead of a polite FIN.
    # shutdown() first: close() alone leaves the connection open for as long as the other
    # pump thread sits in recv() on the same socket, and an idle peer never wakes it.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@dataclass
class TcpProxy:
    upstream_port: int
    port: int = field(default_factory=free_port)
    resets: int = 0
    _pairs: set[tuple[socket.socket, socket.socket]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _listener: socket.socket | None = None
    _closed: bool = False

    def url_for(self, url: str, upstream_port: int) -> str:
        return url.replace(f":{upstream_port}/", f":{self.port}/")

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(512)
        self._listener = listener
        threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True).start()
        return self

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:  # the server is down: so is the connection
                _hard_close(client)
                continue
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(target=self._pump, args=(client, upstream, pair), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, pair), daemon=True).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                known = pair in self._pairs
                self._pairs.discard(pair)
            if known:
                for sock in pair:
                    _hard_close(sock)

    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def reset_all(self) -> int:
        """RST every connection open right now; returns how many were cut."""
        with self._lock:
            pairs = list(self._pairs)
            self._pairs.clear()
        for client, upstream in pairs:
            _hard_close(client)
            _hard_close(upstream)
        self.resets += len(pairs)
        return len(pairs)

    def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            _hard_close(self._listener)
        self.reset_all()
