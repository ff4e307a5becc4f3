"""A small TCP proxy for fault tests: forward, black-hole, cut, resume.

It sits between a pool and a real server so a test can break the network under
the pool without touching the server (the shared servers are never disturbed:
only the proxy's own sockets are affected). It listens on 127.0.0.1 only and
forwards to 127.0.0.1 only, so a test can never point it anywhere else.

* ``forward``: bytes flow both ways (the initial mode).
* ``black_hole()``: nothing is forwarded any more and no new connection gets
  through, but every socket stays open, as when a firewall starts dropping
  packets or a server's host freezes: clients block until their own timeouts.
  New connections are accepted by the kernel (the listening socket stays open)
  and then left unanswered.
* ``cut()``: every connection the proxy holds is closed at once (a network cut,
  a load balancer dropping its flows); new connections keep being accepted and
  forwarded.
* ``resume()``: forward again. Connections that were held during a black hole
  carry on where they stopped, bytes included.

One thread runs a ``selectors`` loop; control calls take effect before they
return (the loop acknowledges each one), so tests need no sleeps.
"""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Callable

LOCALHOST = "127.0.0.1"
_CHUNK = 65536


class Proxy:
    def __init__(self, target_port: int, target_host: str = LOCALHOST) -> None:
        if target_host != LOCALHOST:
            raise ValueError(f"the test proxy only forwards to {LOCALHOST}, not {target_host!r}")
        if not isinstance(target_port, int) or not 0 < target_port < 65536:
            raise ValueError(f"target_port must be a TCP port number, not {target_port!r}")
        self.target = (LOCALHOST, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOCALHOST, 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.mode = "forward"
        #: Connections accepted so far (a pool's connect attempts that reached us).
        self.accepted = 0
        self._peers: dict[socket.socket, socket.socket] = {}
        self._parked: list[socket.socket] = []  # accepted while black-holed
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._commands: list[tuple[Callable[[], None], threading.Event]] = []
        self._commands_lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="test proxy", daemon=True)
        self._thread.start()

    # -- control (any thread) --------------------------------------------------------

    def black_hole(self) -> None:
        self._call(self._do_black_hole)

    def cut(self) -> None:
        self._call(self._do_cut)

    def resume(self) -> None:
        self._call(self._do_resume)

    def connections(self) -> int:
        """Client connections the proxy holds open right now."""
        result: list[int] = []
        self._call(lambda: result.append(len(self._peers) // 2 + len(self._parked)))
        return result[0]

    def close(self) -> None:
        if self._stopping:
            return
        self._call(self._do_close)
        self._thread.join(10)

    def _call(self, fn: Callable[[], None], timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the test proxy's thread is not running")
        done = threading.Event()
        with self._commands_lock:
            self._commands.append((fn, done))
        self._wake_w.send(b"x")
        if not done.wait(timeout):
            raise RuntimeError("the test proxy did not answer within 10 s")

    # -- the loop (its own thread) ---------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select():
                sock = key.fileobj
                if sock is self._wake_r:
                    self._run_commands()
                elif sock is self._listener:
                    self._accept()
                else:
                    self._pump(sock)  # type: ignore[arg-type]
        self._selector.close()

    def _run_commands(self) -> None:
        try:
            self._wake_r.recv(4096)
        except BlockingIOError:
            pass
        with self._commands_lock:
            commands, self._commands = self._commands, []
        for fn, done in commands:
            try:
                fn()
            finally:
                done.set()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.accepted += 1
        if self.mode == "black_hole":
            self._parked.append(client)  # open, silent
            return
        self._link(client)

    def _link(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()  # the server is down: the client sees a reset
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._peers[client] = upstream
        self._peers[upstream] = client
        if self.mode == "forward":
            self._selector.register(client, selectors.EVENT_READ, None)
            self._selector.register(upstream, selectors.EVENT_READ, None)

    def _pump(self, sock: socket.socket) -> None:
        other = self._peers.get(sock)
        if other is None:
            return
        try:
            data = sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        try:
            other.settimeout(5)  # a peer that stops reading must not wedge the loop
            other.sendall(data)
            other.setblocking(False)
        except OSError:
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        other = self._peers.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self._peers.pop(s, None)
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

    def _do_black_hole(self) -> None:
        if self.mode == "black_hole":
            return
        self.mode = "black_hole"
        for sock in self._peers:
            self._selector.unregister(sock)

    def _do_resume(self) -> None:
        if self.mode == "forward":
            return
        self.mode = "forward"
        for sock in self._peers:
            self._selector.register(sock, selectors.EVENT_READ, None)
        parked, self._parked = self._parked, []
        for client in parked:
            self._link(client)

    def _do_cut(self) -> None:
        for sock in list(self._peers):
            if sock in self._peers:
                self._drop(sock)
        for client in self._parked:
            client.close()
        self._parked = []

    def _do_close(self) -> None:
        self._do_cut()
        self._stopping = True
        for sock in (self._listener, self._wake_r):
            self._selector.unregister(sock)
            sock.close()
        self._wake_w.close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
