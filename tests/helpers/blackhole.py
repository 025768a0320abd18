"""`BlackholeProxy`: a TCP proxy of the tests' own that can stop moving bytes, both ways,
without closing anything: a network partition as a node sees it (no FIN, no RST, just
silence), then healed.

    with BlackholeProxy(redis.port) as proxy:   # listens on 127.0.0.1:proxy.port
        ... point a node at proxy.url ...
        proxy.cut()     # bytes stop both ways; every connection stays established
        proxy.heal()    # what was held back flows, then everything else
        proxy.lose_reply(b"EVALSHA")   # the next such command runs; its answer is lost

It runs its own event loop in a background thread, so it serves synchronous pytest code and
async tests alike; its methods return once the proxy has done what they ask (a few
milliseconds at most; calling them from a coroutine blocks that loop as briefly).

During a cut the proxy reads nothing (the senders' bytes wait in the kernel's buffers, as
they would wait in a real partition's retransmissions), writes nothing, and a close or reset
from either side is held back like the bytes. A connection accepted during a cut is connected
to the target only at the heal: the client's connect() succeeds (the kernel completes the
handshake) but nothing comes back; in a real partition connect() itself would hang. Bytes
handed to the kernel before the cut still arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Self, TypeVar, cast

T = TypeVar("T")


class _Side(asyncio.Protocol):
    """One end of a proxied connection: the accepted client or the connection to the target."""

    def __init__(self, pipe: _Pipe, upstream: bool) -> None:
        self.pipe = pipe
        self.upstream = upstream  # True: the side towards the target
        self.transport: asyncio.Transport | None = None
        self.held: list[bytes] = []  # read from this side, not yet forwarded
        self.closed = False  # this side hit EOF or was lost: close the other once flowing
        self.peer_full = False  # the other side's write buffer is full: don't read this one
        self.lost = pipe.proxy.loop.create_future()  # done when its connection is closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.pipe.proxy.open_sides.add(self)
        self.pipe.side_ready(self)

    def data_received(self, data: bytes) -> None:
        self.held.append(data)
        self.pipe.pump()

    def eof_received(self) -> bool:
        self.closed = True
        self.pipe.pump()
        return True  # the pipe closes this side when it forwards the end

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pipe.proxy.open_sides.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)
        self.pipe.pump()

    def pause_writing(self) -> None:
        self.pipe.other(self).peer_full = True
        self.pipe.sync_reading()

    def resume_writing(self) -> None:
        self.pipe.other(self).peer_full = False
        self.pipe.sync_reading()

    def reading_wanted(self) -> bool:
        return self.pipe.proxy.flowing and not self.peer_full and not self.closed


class _Pipe:
    """One client connection and its connection to the target; bytes move only while the
    proxy flows."""

    def __init__(self, proxy: BlackholeProxy) -> None:
        self.proxy = proxy
        self.client = _Side(self, upstream=False)
        self.target = _Side(self, upstream=True)
        self.connecting: asyncio.Task[None] | None = None
        self.done = False
        self.sever = False  # drop the next reply and reset (see BlackholeProxy.lose_reply)

    def other(self, side: _Side) -> _Side:
        return self.target if side is self.client else self.client

    def side_ready(self, side: _Side) -> None:
        if self.done or self.proxy.closing:  # made after the pipe or the proxy closed
            self.close()
            return
        if side is self.client:
            self.proxy.pipes.add(self)
        self.sync_reading()
        self.pump()

    def pump(self) -> None:
        """Forward what each side has read and its end, if the proxy flows; connect to the
        target first if that is still to do."""
        if not self.proxy.flowing or self.done:
            return
        if self.target.transport is None:
            if self.client.closed:
                self.close()
            elif self.connecting is None:
                self.connecting = self.proxy.loop.create_task(self._connect())
            return
        for side in (self.client, self.target):
            peer = self.other(side)
            assert side.transport is not None and peer.transport is not None
            if self.sever and side is self.target and side.held:
                self.abort()  # the reply is lost with the connection
                return
            marker = self.proxy.lose_reply_to
            if marker and side is self.client and any(marker in c for c in side.held):
                self.sever, self.proxy.lose_reply_to = True, b""
            for chunk in side.held:
                self.proxy.count(side.upstream, len(chunk))
                peer.transport.write(chunk)
            side.held.clear()
        if self.client.closed or self.target.closed:
            self.close()  # each transport sends what it still buffers, then closes
        self.sync_reading()

    async def _connect(self) -> None:
        host, port = self.proxy.target
        try:
            await self.proxy.loop.create_connection(lambda: self.target, host, port)
        except OSError:
            self.close()

    def sync_reading(self) -> None:
        for side in (self.client, self.target):
            transport = side.transport
            if transport is None or transport.is_closing():
                continue
            if side.reading_wanted() and self.target.transport is not None:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def abort(self) -> None:
        """Reset both connections at once, dropping what they hold."""
        for side in (self.client, self.target):
            side.held.clear()
            if side.transport is not None:
                side.transport.abort()
        self.close()

    def close(self) -> None:
        self.done = True
        if self.connecting is not None:
            self.connecting.cancel()
        for side in (self.client, self.target):
            if side.transport is not None:
                side.transport.close()
        self.proxy.pipes.discard(self)


class BlackholeProxy:
    """Listens on 127.0.0.1 (a free port: `port`, `address`, `url`) and forwards each
    connection to `target_host:target_port`. `cut()` / `heal()` / `close()`; `bytes_up` and
    `bytes_down` count the bytes forwarded to the target and back; `connections()` the
    connections open through it."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.flowing = True
        self.lose_reply_to = b""  # see lose_reply
        self.bytes_up = 0
        self.bytes_down = 0
        self.pipes: set[_Pipe] = set()
        self.open_sides: set[_Side] = set()  # every connection made and not lost yet
        self.closing = False
        self.loop = asyncio.new_event_loop()
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._thread = threading.Thread(
            target=self.loop.run_forever, name=f"blackhole->{target_port}", daemon=True
        )
        self._thread.start()
        try:
            self._listener = self._call_async(self._listen)
        except BaseException:
            self._stop_loop()
            raise
        self.port: int = self._listener.getsockname()[1]

    async def _listen(self) -> socket.socket:
        listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        listener.setblocking(False)
        self._accepting = self.loop.create_task(self._accept(listener))
        return listener

    async def _accept(self, listener: socket.socket) -> None:
        """Accept connections one by one (not `create_server`, whose accepts in flight when
        it closes leave their sockets to the garbage collector): each one's client side is
        made before the next accept, and a cancel closes what it was making."""
        while True:
            conn, _ = await self.loop.sock_accept(listener)
            try:
                await self.loop.connect_accepted_socket(lambda: _Pipe(self).client, conn)
            except OSError:
                conn.close()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def url(self) -> str:
        """A redis:// URL through the proxy (for a proxied Redis)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def count(self, upstream: bool, n: int) -> None:
        if upstream:
            self.bytes_up += n
        else:
            self.bytes_down += n

    # --------------------------------------------------------------------------- control
    def cut(self) -> None:
        """Stop moving bytes both ways; keep every connection open."""
        self._call(lambda: self._set_flowing(False))

    def heal(self) -> None:
        """Move bytes again: what was held back first."""
        self._call(lambda: self._set_flowing(True))

    def lose_reply(self, marker: bytes) -> None:
        """Once: the connection that next sends bytes containing `marker` has them delivered,
        and then, when the target answers, is reset both ways and the answer dropped (a
        command that ran although its client saw only a broken connection)."""

        def arm() -> None:
            self.lose_reply_to = marker

        self._call(arm)

    def connections(self) -> int:
        return self._call(lambda: len(self.pipes))

    def _set_flowing(self, flowing: bool) -> None:
        self.flowing = flowing
        for pipe in list(self.pipes):
            pipe.sync_reading()
            pipe.pump()

    def close(self) -> None:
        """Close the listener and every connection (FIN; a reset where bytes held back were
        never read, as the kernel does), stop the thread."""
        if not self._thread.is_alive():
            return
        try:
            self._call_async(self._close)
        finally:
            self._stop_loop()

    async def _close(self) -> None:
        assert self._listener is not None and self._accepting is not None
        self.closing = True  # a connection made from now on closes itself
        self._accepting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting
        self._listener.close()
        pipes = set(self.pipes)
        for pipe in pipes:
            pipe.close()
        pipes |= {side.pipe for side in self.open_sides}
        connecting = [p.connecting for p in pipes if p.connecting is not None]
        await asyncio.gather(*connecting, return_exceptions=True)
        lost = [side.lost for side in self.open_sides]
        if lost:
            await asyncio.wait(lost, timeout=2)  # the sockets closed before the loop stops
        for side in list(self.open_sides):  # a close waits for bytes never read: reset
            assert side.transport is not None
            side.transport.abort()
        await asyncio.sleep(0)  # (abort closes the socket on the next loop turn)

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

    # ---------------------------------------------------------------------- thread hops
    def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` in the proxy's loop and return its result."""

        async def run() -> T:
            return fn()

        return self._call_async(run)

    def _call_async(self, coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return asyncio.run_coroutine_threadsafe(coro(), self.loop).result()

    # ------------------------------------------------------------------ context managers
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
