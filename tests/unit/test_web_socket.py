"""The API's listening socket makes the connections it accepts send at once (TCP_NODELAY),
as asyncio does for a socket whose protocol says TCP: with Nagle's algorithm on, a response
written in two parts waits for the client's delayed ACK, about 40 ms on every request after
the first of a keep-alive connection."""

from __future__ import annotations

import asyncio
import socket

from shared.tools.cli.web import listening_socket


async def _nodelay_of_an_accepted_connection() -> int:
    sock = listening_socket("127.0.0.1", 0)
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def accepted(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted_sock = writer.get_extra_info("socket")
        seen.set_result(accepted_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(accepted, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection(*sock.getsockname())
        try:
            return await asyncio.wait_for(seen, 5)
        finally:
            writer.close()


def test_connections_accepted_by_the_api_socket_do_not_wait_to_coalesce_writes() -> None:
    assert asyncio.run(_nodelay_of_an_accepted_connection()) != 0
