"""gRPC's unary calls over HTTP/2 (RFC 9113; gRPC's PROTOCOL-HTTP2.md), on asyncio.

Why not grpc.aio: its calls are read by grpc's core threads and handed to the event loop one at
a time, which on a small machine costs more than the whole of an HTTP/1.1 request in uvicorn.
Here the frames are read in the event loop the HTTP server runs on, and a call costs a frame
parse, a header block (HPACK; a block that leaves the dynamic table as it was is remembered)
and one write of its answer.

What a unary server needs and no more: one length-prefixed message each way (gzip or deflate
requests are inflated, answers go uncompressed), flow control both ways, `grpc-timeout`,
SETTINGS, PING, RST_STREAM and a graceful GOAWAY. No TLS, no server push, no streaming calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

import hpack

log = logging.getLogger("plexa.serving")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE = range(9)
CONTINUATION = 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
# error codes (RFC 9113 section 7)
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x6
REFUSED_STREAM, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x7, 0x9, 0xB
# settings identifiers
MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 0x3, 0x4, 0x5
MAX_HEADER_LIST_SIZE = 0x6

STREAM_WINDOW = 1 << 20  # what each call may send before it is told to go on
CONNECTION_WINDOW = 1 << 24
CONCURRENT_STREAMS = 1024
HEADER_LIST_LIMIT = 64 * 1024
OUR_MAX_FRAME = 1 << 20  # frames we take: fewer, larger DATA frames for large requests
_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_UNIT = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class Status(enum.IntEnum):
    """gRPC status codes (the names grpc.StatusCode has)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


@dataclass
class Reply:
    """A call's answer: its message on OK, else the status and why; trailing metadata."""

    status: Status = Status.OK
    message: str = ""
    body: bytes | None = None
    trailers: tuple[tuple[str, str], ...] = ()


# one method of the service: (metadata, message) -> Reply
Method = Callable[[dict[str, str], bytes], Awaitable[Reply]]


class Refused(Exception):
    """A call refused before its handler runs (framing, size, compression, path)."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class GrpcService:
    """What the connections of one listener share."""

    service: str  # e.g. "inference.GRPCInferenceService"
    methods: dict[str, Method]  # by name, the :path's last part
    max_message: int
    connections: set[Connection] = field(default_factory=set)
    closing: bool = False


@dataclass(frozen=True, slots=True)
class _Head:
    """What a call's header block says: its method, metadata and deadline, or why it is
    refused before its message is read."""

    method: Method | None
    metadata: dict[str, str]
    timeout: float | None = None
    refused: Refused | None = None

    @classmethod
    def of(cls, headers: Iterable[tuple[bytes, bytes]], service: GrpcService) -> _Head:
        metadata: dict[str, str] = {}
        path = method = ""
        for key, value in headers:
            if key == b":path":
                path = value.decode("latin-1")
            elif key == b":method":
                method = value.decode("latin-1")
            elif key[:1] != b":":
                metadata[key.decode("latin-1")] = value.decode("latin-1")
        called, _, name = path.lstrip("/").partition("/")

        def refuse(status: Status, why: str) -> _Head:
            return cls(None, metadata, refused=Refused(status, why))

        if method != "POST":
            return refuse(Status.UNIMPLEMENTED, f"gRPC calls are POSTs, not {method}")
        if not metadata.get("content-type", "").startswith("application/grpc"):
            return refuse(Status.UNIMPLEMENTED, "the content-type is not application/grpc")
        if called != service.service or not name:
            return refuse(Status.UNIMPLEMENTED, f"no method {path}")
        handler = service.methods.get(name)
        if handler is None:
            return refuse(Status.UNIMPLEMENTED, f"{service.service} has no method {name}")
        timeout = None
        if "grpc-timeout" in metadata:
            given = _TIMEOUT.match(metadata["grpc-timeout"])
            if given is None:
                return refuse(Status.INVALID_ARGUMENT, "grpc-timeout is not a gRPC timeout")
            timeout = int(given.group(1)) * _UNIT[given.group(2)]
        return cls(handler, metadata, timeout)


class _Stream:
    __slots__ = ("id", "head", "body", "received", "window", "pending", "tail", "task", "done")

    def __init__(self, stream_id: int, head: _Head, window: int) -> None:
        self.id = stream_id
        self.head = head
        self.body = bytearray()
        self.received = 0  # since our last WINDOW_UPDATE for it
        self.window = window  # what we may still send on it
        self.pending = b""  # answer bytes waiting for the peer's window
        self.tail = b""  # the trailers frame that follows them
        self.task: asyncio.Task[None] | None = None
        self.done = False  # the request's END_STREAM has arrived


class Connection(asyncio.Protocol):
    """One client connection: frames in, calls out, answers back."""

    def __init__(self, service: GrpcService) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.preface = False
        self.decoder = hpack.Decoder(max_header_list_size=HEADER_LIST_LIMIT)
        self.known_heads: dict[bytes, _Head] = {}
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.block = bytearray()  # a header block that CONTINUATION frames go on with
        self.block_flags = 0
        self.block_stream = 0
        self.peer_window = 65535  # peer's initial window for each stream
        self.send_window = 65535  # the connection's
        self.peer_frame = 16384
        self.received = 0
        self.waiting: dict[int, None] = {}  # streams whose answer waits for a window, in order
        self.goaway_sent = False
        self.drained: asyncio.Future[None] | None = None
        self.loop: asyncio.AbstractEventLoop  # set when the connection is made

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is its own
        # kept: on Python 3.11 each get_running_loop() is a getpid() system call
        self.loop = asyncio.get_running_loop()
        self.service.connections.add(self)
        settings = b"".join(
            key.to_bytes(2, "big") + value.to_bytes(4, "big")
            for key, value in (
                (MAX_CONCURRENT_STREAMS, CONCURRENT_STREAMS),
                (INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (MAX_FRAME_SIZE, OUR_MAX_FRAME),
                (MAX_HEADER_LIST_SIZE, HEADER_LIST_LIMIT),
            )
        )
        more = (CONNECTION_WINDOW - 65535).to_bytes(4, "big")
        transport.write(_frame(SETTINGS, 0, 0, settings) + _frame(WINDOW_UPDATE, 0, 0, more))
        if self.service.closing:
            self.goaway()

    def connection_lost(self, exc: Exception | None) -> None:
        self.service.connections.discard(self)
        self.streams.clear()
        self._check_drained()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        at = 0
        if not self.preface:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(bytes(buffer)):
                    self._close(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            if buffer[: len(PREFACE)] != PREFACE:
                self._close(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            self.preface = True
            at = len(PREFACE)
        end = len(buffer)
        while end - at >= 9:
            length = int.from_bytes(buffer[at : at + 3], "big")
            if length > OUR_MAX_FRAME:
                self._close(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                return
            if end - at < 9 + length:
                break
            kind, flags = buffer[at + 3], buffer[at + 4]
            stream_id = int.from_bytes(buffer[at + 5 : at + 9], "big") & 0x7FFFFFFF
            payload = bytes(buffer[at + 9 : at + 9 + length])
            at += 9 + length
            if not self._on_frame(kind, flags, stream_id, payload):
                return  # the connection is closed
        del buffer[:at]

    # ---- frames in

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> bool:
        if self.block_stream and (kind != CONTINUATION or stream_id != self.block_stream):
            return self._close(PROTOCOL_ERROR, "a header block was interrupted")
        if kind == DATA:
            return self._data(flags, stream_id, payload)
        if kind in (HEADERS, CONTINUATION):
            return self._headers(kind, flags, stream_id, payload)
        if kind == SETTINGS:
            return self._settings(flags, stream_id, payload)
        if kind == WINDOW_UPDATE:
            return self._window_update(stream_id, payload)
        if kind == PING:
            if len(payload) != 8 or stream_id:
                return self._close(FRAME_SIZE_ERROR, "a PING is 8 bytes on stream 0")
            if not flags & ACK:
                self._write(_frame(PING, ACK, 0, payload))
            return True
        if kind == RST_STREAM:
            stream = self.streams.pop(stream_id, None)
            if stream is not None and stream.task is not None:
                stream.task.cancel()  # the client gave up: the answer has nowhere to go
            self._check_drained()
            return True
        if kind == GOAWAY:
            self.goaway()
            return True
        if kind == PUSH_PROMISE:
            return self._close(PROTOCOL_ERROR, "a client does not push")
        return True  # PRIORITY and unknown frame types are ignored, as RFC 9113 says

    def _headers(self, kind: int, flags: int, stream_id: int, payload: bytes) -> bool:
        if kind == HEADERS:
            if stream_id == 0 or stream_id % 2 == 0:
                return self._close(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
            if flags & PADDED:
                payload = _unpad(payload)
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            self.block = bytearray(payload)
            self.block_flags = flags
            self.block_stream = stream_id
        else:
            if not self.block_stream:
                return self._close(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            self.block += payload
        if len(self.block) > HEADER_LIST_LIMIT:
            return self._close(ENHANCE_YOUR_CALM, "a header block over 64 KiB")
        if not flags & END_HEADERS:
            return True
        block, flags = bytes(self.block), self.block_flags
        self.block, self.block_stream = bytearray(), 0
        try:
            head = self._decode(block)
        except hpack.HPACKError as exc:
            return self._close(COMPRESSION_ERROR, f"a header block HPACK cannot decode: {exc}")
        stream = self.streams.get(stream_id)
        if stream is not None:  # the request's trailers: nothing in them is read
            if not flags & END_STREAM:
                return self._close(PROTOCOL_ERROR, "trailers without END_STREAM")
            self._end(stream)
            return True
        if stream_id <= self.last_stream:
            return self._close(PROTOCOL_ERROR, f"HEADERS on closed stream {stream_id}")
        self.last_stream = stream_id
        if self.goaway_sent or len(self.streams) >= CONCURRENT_STREAMS:
            self._write(_rst(stream_id, REFUSED_STREAM))
            return True
        stream = _Stream(stream_id, head, self.peer_window)
        self.streams[stream_id] = stream
        if flags & END_STREAM:
            self._end(stream)
        return True

    def _decode(self, block: bytes) -> _Head:
        """The call's head. A block whose fields neither enter the dynamic table nor resize it
        (RFC 7541 section 6) leaves the table as it was, so while no other block changes the
        table, the same bytes mean the same head: a client repeating its calls' headers is
        answered from a dict."""
        known = self.known_heads.get(block)
        if known is not None:
            return known
        head = _Head.of(self.decoder.decode(block, raw=True), self.service)
        if _keeps_table(block):
            if len(self.known_heads) >= 64:
                self.known_heads.clear()
            self.known_heads[block] = head
        else:
            self.known_heads.clear()  # the table may have changed
        return head

    def _data(self, flags: int, stream_id: int, payload: bytes) -> bool:
        size = len(payload)
        self.received += size
        if self.received > CONNECTION_WINDOW:
            return self._close(FLOW_CONTROL_ERROR, "more data than the connection's window")
        if self.received >= CONNECTION_WINDOW // 2:
            self._write(_frame(WINDOW_UPDATE, 0, 0, self.received.to_bytes(4, "big")))
            self.received = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.done:
            if stream_id > self.last_stream:
                return self._close(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return True  # a stream already answered (refused as too large, or reset)
        if flags & PADDED:
            payload = _unpad(payload)
        stream.body += payload
        stream.received += size
        if len(stream.body) > self.service.max_message + 5:
            stream.done = True
            limit = self.service.max_message
            self._answer(
                stream,
                Reply(
                    Status.RESOURCE_EXHAUSTED,
                    f"the message is larger than the limit of {limit} bytes (--max-body)",
                ),
            )
            return True
        if flags & END_STREAM:
            self._end(stream)
        elif stream.received >= STREAM_WINDOW // 2:
            self._write(_frame(WINDOW_UPDATE, 0, stream_id, stream.received.to_bytes(4, "big")))
            stream.received = 0
        return True

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> bool:
        if stream_id or len(payload) % 6:
            return self._close(FRAME_SIZE_ERROR, "a malformed SETTINGS frame")
        if flags & ACK:
            return True
        for at in range(0, len(payload), 6):
            key = int.from_bytes(payload[at : at + 2], "big")
            value = int.from_bytes(payload[at + 2 : at + 6], "big")
            if key == INITIAL_WINDOW_SIZE:
                if value > 0x7FFFFFFF:
                    return self._close(FLOW_CONTROL_ERROR, "an initial window over 2^31-1")
                for stream in self.streams.values():
                    stream.window += value - self.peer_window
                self.peer_window = value
            elif key == MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    return self._close(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                self.peer_frame = value
        self._write(_frame(SETTINGS, ACK, 0, b""))
        self._flush()
        return True

    def _window_update(self, stream_id: int, payload: bytes) -> bool:
        if len(payload) != 4:
            return self._close(FRAME_SIZE_ERROR, "a WINDOW_UPDATE is 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            self.send_window += increment
        elif (stream := self.streams.get(stream_id)) is not None:
            stream.window += increment
        self._flush()
        return True

    # ---- calls

    def _end(self, stream: _Stream) -> None:
        """The request is complete: run its call."""
        stream.done = True
        stream.task = self.loop.create_task(self._call(stream))

    async def _call(self, stream: _Stream) -> None:
        try:
            method, metadata, message, timeout = self._request(stream)
            if timeout is None:
                reply = await method(metadata, message)
            else:
                try:
                    async with asyncio.timeout(timeout):
                        reply = await method(metadata, message)
                except TimeoutError:
                    reply = Reply(Status.DEADLINE_EXCEEDED, "the call's deadline passed")
        except Refused as refused:
            reply = Reply(refused.status, str(refused))
        except Exception:  # the handler answers its own failures; this is a bug here
            log.exception("gRPC call failed")
            reply = Reply(Status.INTERNAL, "internal error")
        self._answer(stream, reply)

    def _request(self, stream: _Stream) -> tuple[Method, dict[str, str], bytes, float | None]:
        """The method, metadata and message of a complete request, or Refused."""
        head = stream.head
        if head.method is None:
            raise cast(Refused, head.refused)
        body = stream.body
        if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            raise Refused(Status.INVALID_ARGUMENT, "the request is not one gRPC message")
        message = bytes(body[5:])
        if body[0]:
            encoding = head.metadata.get("grpc-encoding", "")
            message = _inflate(message, encoding, self.service.max_message)
        return head.method, head.metadata, message, head.timeout

    # ---- frames out

    def _answer(self, stream: _Stream, reply: Reply) -> None:
        if self.streams.get(stream.id) is not stream:
            return  # reset by the client, or the connection is gone
        trailers = _trailers(reply)
        if reply.status != Status.OK or reply.body is None:  # trailers-only
            out = _frame(HEADERS, END_HEADERS | END_STREAM, stream.id, _RESPONSE_HEADERS + trailers)
            if not stream.done:  # the client is still sending: it may stop
                out += _rst(stream.id, NO_ERROR)
            self._write(out)
            self._finish(stream)
            return
        size = len(reply.body) + 5  # the message with its prefix (flag 0: uncompressed)
        if size <= min(stream.window, self.send_window, self.peer_frame):  # the usual answer
            sid = stream.id.to_bytes(4, "big")  # its three frames, written at once
            self._write(
                b"".join((
                    _RESPONSE_HEAD, sid, _RESPONSE_HEADERS,
                    size.to_bytes(3, "big"), bytes((DATA, 0)), sid,
                    len(reply.body).to_bytes(5, "big"), reply.body,
                    len(trailers).to_bytes(3, "big"), _TRAILERS_HEAD, sid, trailers,
                ))
            )  # fmt: skip
            stream.window -= size
            self.send_window -= size
            self._finish(stream)
            return
        stream.pending = len(reply.body).to_bytes(5, "big") + reply.body
        stream.tail = _frame(HEADERS, END_HEADERS | END_STREAM, stream.id, trailers)
        self._send(stream, _frame(HEADERS, END_HEADERS, stream.id, _RESPONSE_HEADERS))

    def _send(self, stream: _Stream, head: bytes = b"") -> None:
        """`head`, as much of the stream's pending message as the windows allow, then (once
        all of it is sent) the trailers."""
        pending = stream.pending
        allowed = min(len(pending), stream.window, self.send_window)
        out = [head]
        sent = 0
        while sent < allowed:
            size = min(allowed - sent, self.peer_frame)
            out.append(_frame(DATA, 0, stream.id, pending[sent : sent + size]))
            sent += size
        stream.window -= sent
        self.send_window -= sent
        stream.pending = pending[sent:]
        if stream.pending:
            self.waiting[stream.id] = None
        else:
            out.append(stream.tail)
        self._write(b"".join(out))
        if not stream.pending:
            self._finish(stream)

    def _flush(self) -> None:
        """Go on with answers that waited for a window."""
        waiting = self.waiting
        if not waiting:
            return
        for stream_id in list(waiting):
            stream = self.streams.get(stream_id)
            if stream is None:
                del waiting[stream_id]
                continue
            if self.send_window <= 0:
                return
            if stream.window > 0:
                del waiting[stream_id]
                self._send(stream)

    def _finish(self, stream: _Stream) -> None:
        self.streams.pop(stream.id, None)
        self._check_drained()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # ---- the end

    def goaway(self) -> None:
        """Take no new calls; close once those begun are answered."""
        if not self.goaway_sent:
            self.goaway_sent = True
            self._write(_frame(GOAWAY, 0, 0, self.last_stream.to_bytes(4, "big") + bytes(4)))
        self._check_drained()

    def _check_drained(self) -> None:
        if self.goaway_sent and not self.streams and self.transport is not None:
            self.transport.close()
        if not self.streams and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    async def drain(self) -> None:
        """Wait until every call begun on this connection is answered."""
        if self.streams:
            self.drained = asyncio.get_running_loop().create_future()
            await self.drained

    def _close(self, code: int, why: str) -> bool:
        goaway = self.last_stream.to_bytes(4, "big") + code.to_bytes(4, "big") + why.encode()
        self._write(_frame(GOAWAY, 0, 0, goaway))
        for stream in self.streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()
        if self.transport is not None:
            self.transport.close()
        return False


async def listen(service: GrpcService, host: str, port: int) -> asyncio.Server:
    """The listener (raises OSError when the address cannot be bound)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: Connection(service), host, port, reuse_port=False)


async def stop(service: GrpcService, server: asyncio.Server, grace: float) -> None:
    """Stop listening, send every connection GOAWAY, wait up to `grace` seconds for the calls
    in flight, then close what is left."""
    service.closing = True
    server.close()
    connections = list(service.connections)
    for connection in connections:
        connection.goaway()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            await asyncio.gather(*(c.drain() for c in connections))
    for connection in list(service.connections):
        connection._close(NO_ERROR, "the server is stopping")
    await server.wait_closed()


# ---- encoding


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


def _unpad(payload: bytes) -> bytes:
    """A PADDED frame's payload without its pad length byte and padding."""
    pad = payload[0] if payload else 0
    return payload[1 : len(payload) - pad] if pad < len(payload) else b""


def _rst(stream_id: int, code: int) -> bytes:
    return _frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))


def _integer(value: int, prefix: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 5.1) with a `prefix`-bit prefix; `first` holds the bits above."""
    top = (1 << prefix) - 1
    if value < top:
        return bytes((first | value,))
    out = bytearray((first | top,))
    value -= top
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A literal field without indexing, new name (RFC 7541 6.2.2): nothing enters the peer's
    table, so no state is shared with it."""
    if len(name) < 127 and len(value) < 127:  # each length in its one-byte prefix
        return b"".join((b"\x00", bytes((len(name),)), name, bytes((len(value),)), value))
    return b"\x00" + _integer(len(name), 7, 0) + name + _integer(len(value), 7, 0) + value


def _keeps_table(block: bytes) -> bool:
    """Whether no field of a (well-formed) block enters the dynamic table or resizes it: each
    is indexed (1xxxxxxx) or a literal without indexing (0000xxxx) or never indexed (0001xxxx),
    none with incremental indexing (01xxxxxx) or a table size update (001xxxxx)."""
    at, end = 0, len(block)
    while at < end:
        first = block[at]
        if first >= 0x80:
            _, at = _read_integer(block, at, 0x7F)
        elif first >= 0x20:
            return False
        else:
            index, at = _read_integer(block, at, 0x0F)
            for _ in range(1 if index else 2):  # the name when not indexed, then the value
                length, at = _read_integer(block, at, 0x7F)
                at += length
    return True


def _read_integer(block: bytes, at: int, mask: int) -> tuple[int, int]:
    """The HPACK integer at `at` (RFC 7541 5.1) whose prefix is `mask`, and where it ends."""
    value = block[at] & mask
    at += 1
    if value < mask:
        return value, at
    shift = 0
    while at < len(block):
        byte = block[at]
        at += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    return value, at


def _percent(message: str) -> bytes:
    """grpc-message's encoding: UTF-8, with '%' and bytes outside printable ASCII escaped."""
    out = bytearray()
    for byte in message.encode():
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


# :status 200 (static index 8) and content-type (static index 31) as a literal
_RESPONSE_HEADERS = b"\x88" + b"\x0f\x10" + _integer(16, 7, 0) + b"application/grpc"
_OK = _literal(b"grpc-status", b"0")
# the start of an answer's HEADERS frame (all but its stream id) and of its trailers' frame
_RESPONSE_HEAD = len(_RESPONSE_HEADERS).to_bytes(3, "big") + bytes((HEADERS, END_HEADERS))
_TRAILERS_HEAD = bytes((HEADERS, END_HEADERS | END_STREAM))


def _trailers(reply: Reply) -> bytes:
    out = [_OK if reply.status == Status.OK else _literal(b"grpc-status", b"%d" % reply.status)]
    if reply.message:  # (cut to stay well inside one frame)
        out.append(_literal(b"grpc-message", _percent(reply.message[:4096])))
    for key, value in reply.trailers:
        out.append(_literal(key.encode(), value.encode("latin-1")))
    return b"".join(out)


def _inflate(message: bytes, encoding: str, limit: int) -> bytes:
    """A compressed message, inflated (gzip or deflate) to at most `limit` bytes."""
    if encoding not in ("gzip", "deflate"):
        raise Refused(
            Status.UNIMPLEMENTED,
            f"the message is compressed with '{encoding or 'identity'}'; "
            "this server inflates gzip and deflate",
        )
    inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(message, limit + 1)
    except zlib.error as exc:
        corrupt = f"the {encoding} message is corrupt: {exc}"
        raise Refused(Status.INVALID_ARGUMENT, corrupt) from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise Refused(
            Status.RESOURCE_EXHAUSTED,
            f"the inflated message is larger than the limit of {limit} bytes (--max-body)",
        )
    return out
