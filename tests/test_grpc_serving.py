"""plexa serve --grpc-port: the Open Inference Protocol over gRPC, driven by tritonclient.grpc
(a third-party client) and, for requests it refuses to build, its raw stub.

One real `plexa serve` process serves a real ONNX export over HTTP and gRPC at once; the
tests compare the two, check the token, the size limit and the status of every refusal
(over a thousand generated malformed requests: never INTERNAL or UNKNOWN), and that SIGTERM
drains gRPC. This process never imports plexa's own message classes: they and tritonclient's
share the protocol's names in protobuf's pool (plexa.serving.grpc_server says why).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import BIN, REPO
from tests.grpc_requests import malformed
from tests.serving_support import cached, digits_data, free_port

TOKEN = "grpc-tok"
AUTH = {"authorization": f"Bearer {TOKEN}"}
MAX_MESSAGE = 64 * 1024  # --max-body: small, so an oversized message is cheap to send
FUZZ = 1200
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


@dataclass
class Server:
    process: subprocess.Popen[str]
    http: str  # host:port
    grpc: str
    lines: list[str]
    reader: threading.Thread | None = None


def _start(targets: list[str], *flags: str) -> Server:
    port, grpc_port = _free_ports(2)
    process = subprocess.Popen(
        [str(BIN / "plexa"), "serve", *targets, "--port", str(port), "--grpc-port",
         str(grpc_port), *flags],
        env={**os.environ, "PLEXA_SERVE_TOKEN": TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    server = Server(process, f"127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", [])

    def read() -> None:  # the log, live: tests wait on what it says, never on a clock
        assert process.stdout is not None
        for line in process.stdout:
            server.lines.append(line)

    server.reader = threading.Thread(target=read, daemon=True)
    server.reader.start()
    client = triton_grpc.InferenceServerClient(server.grpc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "".join(server.lines)
        try:
            if client.is_server_ready():
                client.close()
                return server
        except InferenceServerException:
            pass  # not listening yet
        time.sleep(0.05)
    process.kill()
    raise TimeoutError("plexa serve never became ready over gRPC:\n" + "".join(server.lines))


def _free_ports(n: int) -> list[int]:
    """`n` different free ports (each held while the next is chosen, so none repeats)."""
    import socket

    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _stop(server: Server) -> int:
    """SIGTERM; the exit status, once the whole log is read."""
    server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout=30)
    finally:
        if server.process.poll() is None:
            server.process.kill()
        if server.reader is not None:
            server.reader.join(timeout=10)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.getbasetemp()
    return cached("digits", root), cached("generator", root)


@pytest.fixture(scope="module")
def server(exports: tuple[Path, Path]) -> Iterator[Server]:
    digits, generator = exports
    running = _start([str(digits), f"gen={generator}"], "--max-body", str(MAX_MESSAGE))
    yield running
    _stop(running)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton_grpc.InferenceServerClient]:
    with triton_grpc.InferenceServerClient(server.grpc) as connected:
        yield connected


@pytest.fixture(scope="module")
def stub(server: Server) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _input(x: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def _ipv4(address: str) -> str:
    """grpc listens on a dual-stack socket: 127.0.0.1 shows as ::ffff:127.0.0.1."""
    ip = ipaddress.ip_address(address)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(InferenceServerException) as caught:
        call()  # type: ignore[operator]
    return grpc.StatusCode[caught.value.status().removeprefix("StatusCode.")]


# --------------------------------------------------------------------------- the protocol


def test_health_and_metadata(server: Server, client: triton_grpc.InferenceServerClient) -> None:
    import psutil

    listening = {
        _ipv4(c.laddr.ip)
        for c in psutil.Process(server.process.pid).net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == int(server.grpc.split(":")[1])
    }
    assert listening == {"127.0.0.1"}  # loopback unless --host says otherwise
    assert client.is_server_live() and client.is_server_ready()  # probes need no token
    assert client.get_server_metadata(headers=AUTH).name == "plexa"
    assert client.is_model_ready("digits-cnn", headers=AUTH)
    assert client.is_model_ready("gen", "1", headers=AUTH)
    meta = client.get_model_metadata("digits-cnn", headers=AUTH, as_json=True)
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": ["-1", "10"]}]


def test_infer_matches_the_rest_answer(
    server: Server, client: triton_grpc.InferenceServerClient, stub
) -> None:
    x = digits_data().test.x[:5]
    result = client.infer("digits-cnn", [_input(x)], headers=AUTH, request_id="g-1")
    assert result.get_response().id == "g-1"
    over_grpc = result.as_numpy("output")
    rest = triton_http.InferenceServerClient(server.http)
    tensor = triton_http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    # (a copy: tritonclient.http adds its own headers to the dict it is given)
    over_http = rest.infer("digits-cnn", [tensor], headers=dict(AUTH)).as_numpy("output")
    rest.close()
    assert over_grpc.shape == (5, 10) and over_grpc.dtype == np.float32
    np.testing.assert_allclose(over_grpc, over_http, rtol=0, atol=1e-6)

    # typed contents (tritonclient always sends raw ones): the same answer
    typed = pb.ModelInferRequest(model_name="digits-cnn")
    typed.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    typed.inputs[0].contents.fp32_contents.extend(x.ravel().tolist())
    response = stub.ModelInfer(typed, metadata=tuple(AUTH.items()))
    (raw,) = response.raw_output_contents
    assert list(response.outputs[0].shape) == [5, 10]
    np.testing.assert_allclose(np.frombuffer(raw, "<f4").reshape(5, 10), over_http, atol=1e-6)

    z = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    images = client.infer("gen", [_input(z)], headers=AUTH).as_numpy("output")
    assert images.shape == (3, 1, 8, 8)

    metrics = httpx.get(f"http://{server.http}/metrics", headers=AUTH, timeout=10).text
    assert 'route="/inference.GRPCInferenceService/ModelInfer",status="200"' in metrics


def test_token_model_and_size_refusals(client: triton_grpc.InferenceServerClient) -> None:
    x = digits_data().test.x[:1]
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
        code = _code(lambda h=headers: client.infer("digits-cnn", [_input(x)], headers=h))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: client.get_model_metadata("digits-cnn")) == grpc.StatusCode.UNAUTHENTICATED
    assert (
        _code(lambda: client.infer("nope", [_input(x)], headers=AUTH)) == grpc.StatusCode.NOT_FOUND
    )
    assert (
        _code(lambda: client.get_model_metadata("nope", headers=AUTH)) == grpc.StatusCode.NOT_FOUND
    )
    big = np.zeros((MAX_MESSAGE // 256 + 1, 1, 8, 8), np.float32)  # just over --max-body
    code = _code(lambda: client.infer("digits-cnn", [_input(big)], headers=AUTH))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    wrong = triton_grpc.InferInput("input", [1, 64], "FP32")
    wrong.set_data_from_numpy(x.reshape(1, 64))
    with pytest.raises(InferenceServerException, match=r"takes \['batch', 1, 8, 8\]") as caught:
        client.infer("digits-cnn", [wrong], headers=AUTH)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"


# --------------------------------------------------------------------------- the transport


def test_compressed_calls_and_deadlines(client: triton_grpc.InferenceServerClient, stub) -> None:
    """grpcio's gzip and deflate requests are inflated; a call's deadline (grpc-timeout) is
    read, not refused."""
    x = digits_data().test.x[:3]
    plain = client.infer("digits-cnn", [_input(x)], headers=AUTH).as_numpy("output")
    request = pb.ModelInferRequest(model_name="digits-cnn")
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    for compression in (grpc.Compression.Gzip, grpc.Compression.Deflate):
        response = stub.ModelInfer(
            request, metadata=tuple(AUTH.items()), compression=compression, timeout=30
        )
        answer = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(3, 10)
        np.testing.assert_allclose(answer, plain, atol=1e-6)


def test_an_answer_larger_than_the_flow_control_window(
    server: Server, client: triton_grpc.InferenceServerClient
) -> None:
    """2,000 generated images are 512 KB: many DATA frames, sent as the client's window
    allows (64 KiB at first), the same values as over HTTP."""
    z = np.random.default_rng(1).standard_normal((2000, 4)).astype(np.float32)
    over_grpc = client.infer("gen", [_input(z)], headers=AUTH, client_timeout=30).as_numpy("output")
    rest = triton_http.InferenceServerClient(server.http)
    tensor = triton_http.InferInput("input", list(z.shape), "FP32")
    tensor.set_data_from_numpy(z, binary_data=True)
    over_http = rest.infer("gen", [tensor], headers=dict(AUTH)).as_numpy("output")
    rest.close()
    assert over_grpc.shape == (2000, 1, 8, 8)
    np.testing.assert_allclose(over_grpc, over_http, atol=1e-6)


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


class _Frames:
    """HTTP/2 frames as a socket brings them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def until(self, done: Callable[[int, int, bytes], bool]) -> list[tuple[int, int, bytes]]:
        """Frames read until `done(kind, flags, payload)` holds (or the socket's timeout)."""
        seen = []
        while True:
            while len(self.buffer) < 9 + int.from_bytes(self.buffer[:3].ljust(3, b"\0"), "big"):
                chunk = self.sock.recv(1 << 16)
                assert chunk, f"the server closed the connection after {seen}"
                self.buffer += chunk
            length = int.from_bytes(self.buffer[:3], "big")
            kind, flags = self.buffer[3], self.buffer[4]
            payload = self.buffer[9 : 9 + length]
            self.buffer = self.buffer[9 + length :]
            seen.append((kind, flags, payload))
            if done(kind, flags, payload):
                return seen


def test_answers_wait_for_the_clients_flow_control_window(server: Server) -> None:
    """A raw HTTP/2 client with a 1,000-byte stream window: the server sends exactly that much
    of a 512 KB answer, the rest as WINDOW_UPDATEs allow, then the trailers; PING is acked."""
    import hpack

    z = np.random.default_rng(2).standard_normal((2000, 4)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="gen")
    request.inputs.add(name="input", datatype="FP32", shape=[2000, 4])
    request.raw_input_contents.append(z.tobytes())
    message = request.SerializeToString()
    headers = hpack.Encoder().encode(
        [(":method", "POST"), (":scheme", "http"), (":authority", server.grpc),
         (":path", "/inference.GRPCInferenceService/ModelInfer"),
         ("content-type", "application/grpc"), ("te", "trailers"), *AUTH.items()]
    )  # fmt: skip
    host, port = server.grpc.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        settings = (4).to_bytes(2, "big") + (1000).to_bytes(4, "big")  # INITIAL_WINDOW_SIZE
        sock.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, settings)
            + _frame(1, 4, 1, headers)
            + _frame(0, 1, 1, b"\0" + len(message).to_bytes(4, "big") + message)
            + _frame(6, 0, 0, b"pingpong")
        )  # fmt: skip
        frames = _Frames(sock)
        first = frames.until(lambda kind, flags, payload: kind == 6 and flags & 1)
        assert first[-1][2] == b"pingpong"  # the PING's ACK, with its payload
        sent = [f for f in first if f[0] == 0]
        if sum(len(f[2]) for f in sent) < 1000:  # the ack overtook some DATA: read on
            more = frames.until(lambda kind, flags, payload: kind == 0)
            sent += [f for f in more if f[0] == 0]
        assert sum(len(f[2]) for f in sent) == 1000  # the window, not a byte more
        assert not frames.buffer
        sock.settimeout(0.5)  # nothing more comes until the window opens
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.settimeout(30)
        body, trailers = b"".join(f[2] for f in sent), b""
        while not trailers:
            grant = (64 * 1024).to_bytes(4, "big")
            sock.sendall(_frame(8, 0, 0, grant) + _frame(8, 0, 1, grant))
            got = frames.until(lambda kind, flags, payload: kind in (0, 1))
            for kind, flags, payload in got:
                if kind == 0:
                    body += payload
                elif kind == 1 and flags & 1:
                    trailers = payload
    decoded = dict(hpack.Decoder().decode(trailers))
    assert decoded["grpc-status"] == "0", decoded
    assert int.from_bytes(body[1:5], "big") == len(body) - 5
    response = pb.ModelInferResponse.FromString(body[5:])
    images = np.frombuffer(response.raw_output_contents[0], "<f4")
    assert images.size == 2000 * 64 and np.isfinite(images).all()


def test_unknown_methods_and_non_grpc_clients(server: Server, stub) -> None:
    metadata = tuple(AUTH.items())
    with grpc.insecure_channel(server.grpc) as channel:
        for path in ("/inference.GRPCInferenceService/Nope", "/other.Service/ModelInfer"):
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary(path)(b"", metadata=metadata, timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, path  # type: ignore[attr-defined]
            assert path.split("/")[-1] in caught.value.details()  # type: ignore[attr-defined]
    # HTTP/1.1 on the gRPC port: the connection is closed at once (no hang), the server lives
    with pytest.raises(httpx.HTTPError) as refused:
        httpx.get(f"http://{server.grpc}/", timeout=10)
    assert not isinstance(refused.value, httpx.TimeoutException)
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live


# --------------------------------------------------------------------------- malformed requests


def test_malformed_requests_never_internal_and_the_server_stays_healthy(
    server: Server, client: triton_grpc.InferenceServerClient, stub
) -> None:
    rng = np.random.default_rng(18)
    seen: dict[grpc.StatusCode, int] = {}
    metadata = tuple(AUTH.items())
    requests = [malformed(pb, rng) for _ in range(FUZZ)]
    for start in range(0, FUZZ, 40):  # 40 at a time: the batcher merges some of them
        calls = [stub.ModelInfer.future(r, metadata=metadata, timeout=30)
                 for r in requests[start : start + 40]]  # fmt: skip
        for request, call in zip(requests[start : start + 40], calls, strict=True):
            try:
                call.result()
                code = grpc.StatusCode.OK
            except grpc.RpcError:
                code = call.code()
                assert call.details(), (request, code)  # a reason, always
            seen[code] = seen.get(code, 0) + 1
            assert code not in NEVER, (request, code, call.details())
    # bytes that are no ModelInferRequest at all, through a method that sends them as given
    with grpc.insecure_channel(server.grpc) as channel:
        raw_infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for size in range(1, 101):
            junk = rng.bytes(size)
            try:
                raw_infer(junk, metadata=metadata, timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
            seen[code] = seen.get(code, 0) + 1
            assert code not in NEVER, junk
    assert sum(seen.values()) >= 1000
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > FUZZ // 2, seen
    assert grpc.StatusCode.NOT_FOUND in seen, seen
    assert client.is_server_ready() and client.is_model_ready("digits-cnn", headers=AUTH)
    x = digits_data().test.x[:2]
    assert client.infer("digits-cnn", [_input(x)], headers=AUTH).as_numpy("output").shape == (2, 10)


def test_the_one_pass_check_of_raw_requests_agrees_with_the_general_checks(
    exports: tuple[Path, Path],
) -> None:
    """plexa checks the request clients usually send in one pass (`grpc_protocol._raw_feeds`);
    every generated request it takes, the general checks take with the same arrays, and it
    takes the usual one. In a process of its own: it imports plexa's message classes."""
    done = subprocess.run(
        [str(BIN / "python"), "-c",
         f"from tests.grpc_requests import agree; agree({str(exports[0])!r}, 3000)"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    taken, total = map(int, done.stdout.split())
    assert total == 3003 and 100 < taken < total  # the usual request, and valid variants


# --------------------------------------------------------------------------- the command


def test_sigterm_drains_grpc(exports: tuple[Path, Path]) -> None:
    """Calls keep arriving while SIGTERM lands: every call the server began is answered.

    One not yet begun is refused: UNAVAILABLE once the port is closed (a call sent past the
    server's GOAWAY is refused with REFUSED_STREAM, which grpcio retries and finds the port
    closed), or CANCELLED by the client for one caught in the connection's close; the server's
    log shows it never ran.
    """
    running = _start([str(exports[0])])
    with triton_grpc.InferenceServerClient(running.grpc) as big:  # 1 MiB: more than one window
        rows = np.resize(digits_data().test.x, (4096, 1, 8, 8)).astype(np.float32)
        answer = big.infer("digits-cnn", [_input(rows)], headers=AUTH).as_numpy("output")
        assert answer.shape == (4096, 10) and np.isfinite(answer).all()
    x = digits_data().test.x[:4]
    answered: list[grpc.StatusCode] = []
    stop = threading.Event()

    def caller() -> None:
        with triton_grpc.InferenceServerClient(running.grpc) as own:
            while not stop.is_set():
                try:
                    own.infer("digits-cnn", [_input(x)], headers=AUTH, client_timeout=30)
                    answered.append(grpc.StatusCode.OK)
                except InferenceServerException as exc:
                    status = (exc.status() or "").removeprefix("StatusCode.")
                    answered.append(grpc.StatusCode[status])
                    if status == "UNAVAILABLE":
                        return

    with ThreadPoolExecutor(4) as pool:
        callers = [pool.submit(caller) for _ in range(4)]
        deadline = time.monotonic() + 30
        while answered.count(grpc.StatusCode.OK) < 20:  # calls are flowing
            assert time.monotonic() < deadline, answered
            for f in callers:
                assert not f.done(), f.result()
            time.sleep(0.01)
        status = _stop(running)
        stop.set()
        for f in callers:
            f.result(timeout=60)
    assert status in (0, -signal.SIGTERM)
    refused = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert set(answered) <= {grpc.StatusCode.OK, *refused}, set(answered)
    log = "".join(running.lines)
    began = log.count(" gRPC ModelInfer ")  # the access line of every call the server ran
    ok = answered.count(grpc.StatusCode.OK) + 1  # and the 4,096-row call
    assert began == log.count(" gRPC ModelInfer OK ") == ok
    assert "gRPC stopped: every call in flight was answered" in log
    assert log.index("gRPC stopped") < log.index("stopped: every request in flight was answered")


def test_cli_warns_of_a_non_loopback_host_without_a_token(tmp_path: Path) -> None:
    """The rule REST has, for gRPC too: another host without a token is warned about (and
    here the target is missing, so nothing is bound)."""
    env = {k: v for k, v in os.environ.items() if k != "PLEXA_SERVE_TOKEN"}
    done = subprocess.run(
        [str(BIN / "plexa"), "serve", "missing.onnx", "--host", "0.0.0.0", "--grpc-port", "9"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )  # fmt: skip
    output = " ".join(done.stdout.split())
    assert "listening on 0.0.0.0 without --token: anyone who can reach these ports" in output
    assert "gRPC on 0.0.0.0:9" in output
    assert done.returncode == 2 and "missing.onnx: no such file" in output
    ray = subprocess.run(
        [str(BIN / "plexa"), "serve", "missing.onnx", "--ray", "--grpc-port", "9"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert ray.returncode == 2 and "--grpc-port does not work with --ray" in ray.stdout


def test_a_grpc_port_in_use_stops_the_server(exports: tuple[Path, Path]) -> None:
    """Not a second listener on a shared port (grpc's SO_REUSEPORT is off): an error."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        done = subprocess.run(
            [str(BIN / "plexa"), "serve", str(exports[0]), "--port", str(free_port()),
             "--grpc-port", str(busy)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"gRPC cannot listen on 127.0.0.1:{busy}" in done.stdout


def test_generated_messages_are_current(tmp_path: Path) -> None:
    """The committed protoc output is what scripts/generate-protos writes from the .proto."""
    subprocess.run(
        [str(REPO / "scripts/generate-protos"), str(tmp_path)],
        check=True, timeout=60, env={**os.environ, "PYTHON": str(BIN / "python")},
    )  # fmt: skip
    committed = REPO / "platform/plexa/serving/proto"
    for name in ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi"):
        assert (tmp_path / name).read_text() == (committed / name).read_text(), name
