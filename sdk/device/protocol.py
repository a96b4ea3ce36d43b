"""Host side of the device protocol: frames over a byte stream to a runner's endpoint (runtime_c/endpoint.c).

Frame (little-endian): ``"KILN"``, u8 version, u8 type, u16 reserved, u32 payload length, payload, CRC-32
(zlib) of everything before it. The host sends one request and reads exactly one reply: the request type
``| 0x80``, or ERROR (i32 status, u8 request type, u8 reason, four numbers and a text, which the host words
with :func:`kiln.runtime_c.abi.error_message`). The payload layouts are documented once, in
``runtime_c/include/kiln/endpoint.h``; docs/topics/runtime.md explains them.

A :class:`Session` speaks it over a ``reader``/``writer`` pair of binary streams. Every call has a timeout
(a hung runner must not hang the host): when it expires the session kills its :class:`Peer` (the runner
process, if it has one) and raises :class:`DeviceTimeout`. A stream that ends raises :class:`DeviceLost`
with what the peer knows (exit status, signal, stderr). Both leave the session unusable; an ERROR reply
(:class:`DeviceError` with the device's status and message) does not.
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple, NoReturn, Protocol

import numpy as np

from kiln.device.executable import Executable
from kiln.device.profile import KernelCall, KernelStats, Profile
from kiln.runtime_c import abi
from kiln.runtime_c.abi import Msg

MAGIC = abi.FRAME_MAGIC
PROTOCOL_VERSION = abi.PROTOCOL_VERSION
HEADER = struct.Struct("<4sBBHI")
assert HEADER.size == abi.FRAME_HEADER_BYTES
CRC_BYTES = abi.FRAME_CRC_BYTES
MAX_PAYLOAD = abi.MAX_PAYLOAD
MIN_PAYLOAD = abi.MIN_PAYLOAD
FAULT_STATUS = abi.STATUS["KILN_ERR_PLATFORM_FAULT"]

MSG_INFO = Msg.INFO
MSG_SET_INPUT = Msg.SET_INPUT
MSG_RUN = Msg.RUN
MSG_GET_OUTPUT = Msg.GET_OUTPUT
MSG_TIME = Msg.TIME
MSG_PROFILE = Msg.PROFILE
MSG_QUIT = Msg.QUIT
MSG_REPLY = Msg.REPLY
MSG_ERROR = Msg.ERROR
MESSAGE_NAMES = {int(m): m.name for m in Msg if m is not Msg.REPLY}


class DeviceError(RuntimeError):
    """The device side failed. Direct instances carry the device's ERROR reply: ``status`` (``category << 8
    | code``, see status.h), the ``request`` it answered, and ``detail``, what went wrong in words."""

    def __init__(
        self, message: str, status: int | None = None, request: int | None = None, detail: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.request = request
        self.detail = detail


class DeviceLost(DeviceError):
    """The stream ended: the runner exited, crashed or was killed. The message says which."""


class DeviceTimeout(DeviceLost):
    """The device did not answer in time; the session killed its peer."""


class ProtocolError(DeviceError):
    """The device sent bytes that are not a valid reply."""


class InputError(ValueError):
    """Inputs that do not match the model: unknown/missing names, wrong shape or dtype."""


def encode_frame(msg_type: int, payload: bytes = b"", *, version: int = PROTOCOL_VERSION) -> bytes:
    """One frame: header, payload, CRC-32."""
    head = HEADER.pack(MAGIC, version, msg_type, 0, len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


class TensorSpec(NamedTuple):
    """A model input or output as the device describes it (``(name, dtype, shape)`` like ModelInfo's)."""

    name: str
    dtype: str
    shape: tuple[int, ...]  # with run-time dimensions (DeviceInfo.input_dims): their bounds

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.numpy_dtype.itemsize

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The NumPy dtype of the buffer (``bfloat16`` travels as ``uint16``)."""
        return np.dtype("uint16" if self.dtype == "bfloat16" else self.dtype)


@dataclass(frozen=True)
class DeviceInfo:
    """The INFO reply: the model linked into the runner and the endpoint's limits."""

    name: str
    abi_version: int
    max_payload: int
    ticks_per_second: int
    workspace_bytes: int
    weights_bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    kernel_names: tuple[str, ...]
    #: dynamic shapes: the bounds of the model's run-time dimensions; the first ``named_dims`` are the inputs'
    #: named sizes (set with DIMS), the rest are computed from them by each run
    dim_bounds: tuple[int, ...] = ()
    named_dims: int = 0
    #: per input (output), per dimension: -1 (a fixed size) or the run-time dimension that gives its size;
    #: empty for a tensor whose sizes are all fixed
    input_dims: tuple[tuple[int, ...], ...] = ()
    output_dims: tuple[tuple[int, ...], ...] = ()

    def at(self, index: int, table: Sequence[int] | None, *, output: bool) -> TensorSpec:
        """Input (output) ``index`` at the run-time dimensions ``table`` (None: at the bounds)."""
        spec = (self.outputs if output else self.inputs)[index]
        dims = (self.output_dims if output else self.input_dims)[index] if self.dim_bounds else ()
        if not dims or table is None:
            return spec
        shape = tuple(d if k < 0 else int(table[k]) for d, k in zip(spec.shape, dims, strict=True))
        return spec._replace(shape=shape)

    @classmethod
    def decode(cls, record: bytes) -> DeviceInfo:
        r = _Cursor(record)
        abi, max_payload, tps, workspace, weights = r.unpack("<IIQQQ")
        name = r.string()
        inputs = tuple(r.tensor() for _ in range(r.unpack("<I")[0]))
        outputs = tuple(r.tensor() for _ in range(r.unpack("<I")[0]))
        kernels = tuple(r.string() for _ in range(r.unpack("<I")[0]))
        num_dims, named = r.unpack("<II")
        bounds = tuple(int(b) for b in r.unpack(f"<{num_dims}q"))
        if named > num_dims:
            raise ProtocolError(f"device reports {named} named run-time dimensions of {num_dims}")

        def dims_of(t: TensorSpec) -> tuple[int, ...]:
            if not num_dims:  # a model of fixed shapes: no per-tensor map follows
                return ()
            dims = tuple(int(k) for k in r.unpack(f"<{len(t.shape)}b"))
            if any(k >= num_dims for k in dims):
                raise ProtocolError(f"tensor {t.name!r} names a run-time dimension the model does not have")
            return dims if any(k >= 0 for k in dims) else ()

        in_dims = tuple(dims_of(t) for t in inputs)
        out_dims = tuple(dims_of(t) for t in outputs)
        r.finish()
        if not MIN_PAYLOAD <= max_payload <= MAX_PAYLOAD:
            raise ProtocolError(
                f"device reports a frame buffer of {max_payload} bytes, outside the protocol's "
                f"{MIN_PAYLOAD}..{MAX_PAYLOAD}"
            )
        return cls(
            name,
            abi,
            max_payload,
            tps,
            workspace,
            weights,
            inputs,
            outputs,
            kernels,
            bounds,
            named,
            in_dims,
            out_dims,
        )


class _Cursor:
    """Reads fields from a reply payload; running past the end is a ProtocolError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError(f"reply too short: needs {self.pos + n} bytes, has {len(self.data)}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def string(self) -> str:
        return self.take(self.unpack("<I")[0]).decode("utf-8", errors="replace")

    def tensor(self) -> TensorSpec:
        name = self.string()
        code, bits, lanes, ndim = self.unpack("<BBHI")
        shape = self.unpack(f"<{ndim}q")
        (nbytes,) = self.unpack("<Q")
        dtype = abi.DTYPE_NAMES.get((code, bits))
        if dtype is None or lanes != 1:
            raise ProtocolError(
                f"tensor {name!r} has an unsupported dtype (code {code}, {bits} bits, {lanes} lanes)"
            )
        spec = TensorSpec(name, dtype, tuple(int(d) for d in shape))
        if spec.nbytes != nbytes:
            raise ProtocolError(f"tensor {name!r}: {nbytes} bytes do not match {dtype} {spec.shape}")
        return spec

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"reply has {len(self.data) - self.pos} unexpected trailing bytes")


class Peer(Protocol):
    """What is at the other end of a Session's stream (a runner process, a board); lets the session explain
    and end failures. Launchers provide one; a bare stream has none."""

    label: str

    def running(self) -> bool:
        """False once the device side has stopped."""

    def failure(self) -> str:
        """Why the stream ended (waits briefly for the device side to stop): exit status, signal, stderr."""

    def kill(self) -> None:
        """Stops the device side now (safe to call from another thread)."""

    def close(self) -> None:
        """Releases the device side after the session closed its stream (waits, then kills)."""


class _Stream:
    """Reads and writes with a deadline. Uses select() on file descriptors; a reader without one (e.g. an
    in-memory buffer) is read blockingly."""

    def __init__(self, reader: BinaryIO, writer: BinaryIO) -> None:
        self.reader = reader
        self.writer = writer
        self.rfd = _fileno(reader)
        self.wfd = _fileno(writer)
        if self.wfd is not None:
            os.set_blocking(self.wfd, False)

    def read_exact(self, n: int, deadline: float | None) -> bytes:
        """Exactly n bytes; raises EOFError at end of stream and TimeoutError at the deadline."""
        chunks: list[bytes] = []
        while n > 0:
            if self.rfd is None:
                data = self.reader.read(n)
            else:
                _wait(self.rfd, deadline, write=False)
                data = os.read(self.rfd, n)
            if not data:
                raise EOFError
            chunks.append(data)
            n -= len(data)
        return b"".join(chunks)

    def write_all(self, data: bytes, deadline: float | None) -> None:
        if self.wfd is None:
            self.writer.write(data)
            self.writer.flush()
            return
        view = memoryview(data)
        while view:
            _wait(self.wfd, deadline, write=True)
            try:
                view = view[os.write(self.wfd, view) :]
            except BlockingIOError:
                continue

    def close(self) -> None:
        for f in (self.writer, self.reader):
            with contextlib.suppress(OSError):
                f.close()


def _fileno(f: Any) -> int | None:
    try:
        return int(f.fileno())
    except (AttributeError, OSError, ValueError):
        return None


def _wait(fd: int, deadline: float | None, *, write: bool) -> None:
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TimeoutError
        ready = select.select([], [fd], [], remaining) if write else select.select([fd], [], [], remaining)
        if ready[0] or ready[1]:
            return


_DEFAULT: Any = object()


class Session(Executable):
    """A conversation with one device endpoint over ``reader`` (device -> host) and ``writer`` (host ->
    device). ``timeout`` bounds each call in seconds (None: wait forever); TIME and PROFILE add their expected
    duration, estimated from the slowest RUN seen so far (:attr:`run_seconds`).

    Not thread-safe, except :meth:`kill`, which another thread may call to abort a hung call.

    An ERROR reply with ``KILN_ERR_PLATFORM_FAULT`` (a board's fault handler sends one, then halts) raises
    :class:`DeviceLost` naming the device and leaves the session unusable.
    """

    #: What :meth:`time` and :meth:`profile` measure (launchers of emulated boards replace it).
    clock = "wall-clock time on the device"

    def __init__(
        self,
        reader: BinaryIO,
        writer: BinaryIO,
        *,
        timeout: float | None = 60.0,
        peer: Peer | None = None,
        label: str | None = None,
    ) -> None:
        self._stream = _Stream(reader, writer)
        self.timeout = timeout
        self.peer = peer
        self.label = label or (peer.label if peer is not None else "device")
        self._info: DeviceInfo | None = None
        self._table: tuple[int, ...] | None = None  # run-time dimensions as last set or reported (DIMS)
        self._broken: str | None = None
        self._closed = False
        self._kill_lock = threading.Lock()
        self._cleanups: list[Callable[[], None]] = []
        self.run_seconds = 0.0  # wall time of the slowest RUN so far (host side, so it includes emulation)

    # ---- frames

    def send_bytes(self, data: bytes, timeout: float | None = _DEFAULT) -> None:
        """Writes raw bytes (a frame from :func:`encode_frame`, or anything, for tests)."""
        self._check_usable()
        deadline = self._deadline(timeout)
        try:
            self._stream.write_all(data, deadline)
        except TimeoutError:
            self._fail_timeout("accept a request", timeout)
        except OSError as e:  # BrokenPipeError: the device side is gone
            self._fail_lost(f"while sending a request ({e.strerror or e})")

    def receive(self, request: int = 0, timeout: float | None = _DEFAULT) -> tuple[int, bytes]:
        """Reads one frame and returns ``(type, payload)``; checks magic, version, length and CRC."""
        self._check_usable()
        deadline = self._deadline(timeout)
        what = MESSAGE_NAMES.get(request, f"message 0x{request:02x}")
        try:
            head = self._stream.read_exact(HEADER.size, deadline)
            magic, version, msg_type, _, length = HEADER.unpack(head)
            if magic == MAGIC and version != PROTOCOL_VERSION:
                self._fail_protocol(
                    f"{self.label} speaks device-protocol version {version}, this kiln speaks version "
                    f"{PROTOCOL_VERSION}: rebuild the package (or flash the firmware) with this kiln"
                )
            if magic != MAGIC:
                self._fail_protocol(
                    f"reply to {what} has a bad header {head!r} (expected magic {MAGIC!r}, "
                    f"version {PROTOCOL_VERSION})"
                )
            if length > MAX_PAYLOAD:
                self._fail_protocol(f"reply to {what} announces {length} bytes, over the {MAX_PAYLOAD} limit")
            payload = self._stream.read_exact(length, deadline)
            (crc,) = struct.unpack("<I", self._stream.read_exact(CRC_BYTES, deadline))
        except TimeoutError:
            self._fail_timeout(f"answer {what}", timeout)
        except (EOFError, OSError):
            self._fail_lost(f"during {what}")
        if crc != zlib.crc32(payload, zlib.crc32(head)):
            self._fail_protocol(f"reply to {what} failed its CRC check")
        return msg_type, payload

    def call(self, request: int, payload: bytes = b"", *, timeout: float | None = _DEFAULT) -> bytes:
        """Sends one request and returns the reply payload; an ERROR reply raises :class:`DeviceError`."""
        self.send_bytes(encode_frame(request, payload), timeout)
        msg_type, reply = self.receive(request, timeout)
        if msg_type == MSG_ERROR:
            error = error_from_reply(reply, request)
            if error.status == FAULT_STATUS:
                what = MESSAGE_NAMES.get(request, request)
                self._broken = f"{self.label} stopped during {what}: {error.detail}"
                self.kill()
                raise DeviceLost(self._broken, error.status, error.request)
            raise error
        if msg_type != request | MSG_REPLY:
            self._fail_protocol(
                f"expected the reply to {MESSAGE_NAMES.get(request)}, got type 0x{msg_type:02x}"
            )
        return reply

    # ---- messages

    def info(self) -> DeviceInfo:
        """The model and limits of the device (cached after the first call)."""
        if self._info is None:
            record = bytearray()
            total = None
            while total is None or len(record) < total:
                reply = _Cursor(self.call(MSG_INFO, struct.pack("<I", len(record))))
                (now,) = reply.unpack("<I")
                chunk = reply.data[4:]
                if (total is not None and now != total) or (not chunk and len(record) < now):
                    self._fail_protocol("INFO replies are inconsistent")
                total = now
                record += chunk
            self._info = DeviceInfo.decode(bytes(record))
        return self._info

    def select(self, index: int) -> int:
        """Addresses model ``index`` of the device's models from now on (a firmware may serve several; SELECT)
        and returns how many it serves. Model 0 is selected when a device starts."""
        (count,) = struct.unpack("<I", self.call(Msg.SELECT, struct.pack("<I", index)))
        self._info = None
        self._table = None
        return int(count)

    def dims(self, sizes: Sequence[int] | None = None) -> tuple[int, ...]:
        """The model's run-time dimension table (DIMS): its named sizes, then the sizes the last run computed
        from them. ``sizes`` (one per named dimension) sets the named sizes for the next inputs and runs."""
        values = [int(v) for v in sizes or ()]
        reply = _Cursor(self.call(Msg.DIMS, struct.pack(f"<I{len(values)}q", len(values), *values)))
        (count,) = reply.unpack("<I")
        table = tuple(int(v) for v in reply.unpack(f"<{count}q"))
        reply.finish()
        self._table = table
        return table

    def _sizes_of(self, inputs: Mapping[str, Any]) -> list[int] | None:
        """The named run-time sizes that ``inputs`` have (None for a model of fixed shapes), checked against
        each other and the bounds."""
        info = self.info()
        if not info.named_dims:
            return None
        current = self._table or info.dim_bounds
        sizes: dict[int, tuple[int, str]] = {}
        for spec, dims in zip(info.inputs, info.input_dims, strict=True):
            if spec.name not in inputs or not dims:
                continue
            shape = np.shape(inputs[spec.name])
            if len(shape) != len(spec.shape):
                raise InputError(
                    f"input {spec.name!r}: the model expects {len(spec.shape)} dimensions "
                    f"{_shape_text(spec, dims)}, got shape {tuple(shape)}"
                )
            for d, k in enumerate(dims):
                if k < 0:
                    continue
                size = int(shape[d])
                if not 1 <= size <= info.dim_bounds[k]:
                    raise InputError(
                        f"input {spec.name!r}: dimension {d} is {size}; the model was compiled for 1.."
                        f"{info.dim_bounds[k]} there (compile with a larger bound, e.g. --shape "
                        f"{spec.name}=...x?:{max(size, 1)}x...)"
                    )
                if k in sizes and sizes[k][0] != size:
                    raise InputError(
                        f"input {spec.name!r}: dimension {d} is {size}, but {sizes[k][1]} gives the same "
                        f"run-time dimension the size {sizes[k][0]}"
                    )
                sizes[k] = (size, f"input {spec.name!r}")
        return [sizes[k][0] if k in sizes else int(current[k]) for k in range(info.named_dims)]

    def set_input(self, key: int | str, value: Any) -> None:
        """Sends one input (by index or name); its shape and dtype must match the model exactly (a run-time
        dimension: the size set last, see :meth:`dims`)."""
        index, _ = self._tensor(key, outputs=False)
        data = _check_array(self.info().at(index, self._table, output=False), value)
        chunk = self.info().max_payload - 20
        for offset in range(0, len(data), chunk):
            part = data[offset : offset + chunk]
            self.call(MSG_SET_INPUT, struct.pack("<IQQ", index, len(data), offset) + part)

    def set_inputs(self, inputs: Mapping[str, Any], *, complete: bool = False) -> None:
        """Sends several inputs by name, after checking all of them (nothing is sent if one is wrong).
        ``complete``: every model input must be given."""
        specs = {s.name: s for s in self.info().inputs}
        unknown = sorted(set(inputs) - set(specs))
        if unknown:
            raise InputError(
                f"unknown input(s) {', '.join(map(repr, unknown))}; the model "
                f"{self.info().name!r} has inputs {', '.join(map(repr, specs))}"
            )
        missing = [s for name, s in specs.items() if name not in inputs]
        if complete and missing:
            raise InputError(
                "missing input(s) " + ", ".join(f"{s.name!r} ({s.dtype} {s.shape})" for s in missing)
            )
        sizes = self._sizes_of(inputs)
        table = None if sizes is None else (*sizes, *self.info().dim_bounds[len(sizes) :])
        index = {s.name: i for i, s in enumerate(self.info().inputs)}
        for name, value in inputs.items():
            _check_array(self.info().at(index[name], table, output=False), value)
        if sizes is not None and tuple(sizes) != (self._table or self.info().dim_bounds)[: len(sizes)]:
            self.dims(sizes)
        for name, value in inputs.items():
            self.set_input(name, value)

    def get_output(self, key: int | str) -> np.ndarray:
        """Fetches one output (by index or name) of the last run."""
        index, _ = self._tensor(key, outputs=True)
        spec = self.info().at(index, self._table, output=True)
        data = bytearray()
        while len(data) < spec.nbytes:
            reply = _Cursor(self.call(MSG_GET_OUTPUT, struct.pack("<IQ", index, len(data))))
            nbytes, offset = reply.unpack("<QQ")
            chunk = reply.data[16:]
            if nbytes != spec.nbytes or offset != len(data) or not chunk:
                self._fail_protocol(f"GET_OUTPUT reply for {spec.name!r} is inconsistent")
            data += chunk
        return np.frombuffer(data, dtype=spec.numpy_dtype).reshape(spec.shape)

    def run(
        self, inputs: Mapping[str, Any] | None = None, *, fetch_outputs: bool = True
    ) -> dict[str, np.ndarray]:
        """Runs the model once, on ``inputs`` (all of them, by name) if given, else on the inputs set before.
        Returns the outputs by name (``{}`` when ``fetch_outputs`` is False)."""
        if inputs is not None:
            self.set_inputs(inputs, complete=True)
        t0 = time.monotonic()
        self.call(MSG_RUN)
        self.run_seconds = max(self.run_seconds, time.monotonic() - t0)
        if not fetch_outputs:
            return {}
        info = self.info()
        if len(info.dim_bounds) > info.named_dims:  # sizes computed by the run: the outputs' shapes
            self.dims()
        return {spec.name: self.get_output(i) for i, spec in enumerate(self.info().outputs)}

    def time(
        self,
        number: int = 10,
        repeat: int = 3,
        min_repeat_ms: int = 0,
        *,
        inputs: Mapping[str, Any] | None = None,
        timeout: float | None = _DEFAULT,
    ) -> list[float]:
        """Seconds per run, one figure per repeat, measured on the device like TVM's time_evaluator: after
        one warm-up run, each repeat runs ``number`` times, growing ``number`` until a repeat lasts at least
        ``min_repeat_ms``. The first call runs the model once to learn its duration. ``timeout`` (default: the
        session's) is extended by twice the expected duration:
        ``(1 + number x repeat)`` runs of :attr:`run_seconds` plus ``repeat x min_repeat_ms``."""
        if number < 1 or repeat < 1 or min_repeat_ms < 0:
            raise ValueError(
                f"time() needs number >= 1, repeat >= 1, min_repeat_ms >= 0; got {number}, "
                f"{repeat}, {min_repeat_ms}"
            )
        if inputs is not None:
            self.set_inputs(inputs, complete=True)
        if self.run_seconds == 0.0:  # calibrate the budget (TIME's own warm-up run would be the same cost)
            self.run(fetch_outputs=False)
        base = self.timeout if timeout is _DEFAULT else timeout
        expected = (1 + number * repeat) * self.run_seconds + repeat * min_repeat_ms / 1000.0
        budget = None if base is None else base + 2.0 * expected
        reply = _Cursor(
            self.call(MSG_TIME, struct.pack("<III", number, repeat, min_repeat_ms), timeout=budget)
        )
        tps, count = reply.unpack("<QI")
        out = []
        for _ in range(count):
            runs, ticks = reply.unpack("<IQ")
            if tps == 0 or runs == 0:
                self._fail_protocol("TIME reply has zero ticks per second or zero runs")
            out.append(ticks / tps / runs)
        reply.finish()
        return out

    def profile(self, inputs: Mapping[str, Any] | None = None) -> Profile:
        """Runs once (on ``inputs`` if given) with the profiler on and returns every kernel call, in order."""
        if inputs is not None:
            self.set_inputs(inputs, complete=True)
        names = self.info().kernel_names
        calls: list[KernelCall] = []
        tps = total = dropped = 0
        while not calls or len(calls) < total:
            budget = None if self.timeout is None else self.timeout + 2.0 * self.run_seconds
            reply = _Cursor(self.call(MSG_PROFILE, struct.pack("<I", len(calls)), timeout=budget))
            tps, total, dropped, first, count = reply.unpack("<QIIII")
            if tps == 0 or first != len(calls) or (count == 0 and len(calls) < total):
                self._fail_protocol("PROFILE replies are inconsistent")
            for _ in range(count):
                k, start, end = reply.unpack("<IQQ")
                calls.append(KernelCall(k, names[k] if k < len(names) else f"kernel{k}", start, end))
            reply.finish()
            if total == 0:
                break
        return Profile(calls, tps, dropped, model=self.info().name)

    # ---- lifetime

    @property
    def alive(self) -> bool:
        """True while the session can be used and its peer (if any) is running."""
        return not self._closed and self._broken is None and (self.peer is None or self.peer.running())

    def kill(self) -> None:
        """Stops the device side now; a call blocked in another thread then raises :class:`DeviceLost`."""
        with self._kill_lock:
            if self.peer is not None:
                self.peer.kill()

    def add_cleanup(self, fn: Callable[[], None]) -> None:
        """Calls ``fn`` when the session closes, after the peer was released (e.g. to remove the directory
        the runner ran in)."""
        self._cleanups.append(fn)

    def close(self) -> None:
        """Says QUIT (if the session still works), closes the stream, releases the peer, then runs the
        cleanups. Idempotent."""
        if self._closed:
            return
        try:
            if self._broken is None:
                with contextlib.suppress(DeviceError):
                    self.call(MSG_QUIT, timeout=min(5.0, self.timeout or 5.0))
            self._closed = True
            self._stream.close()
            if self.peer is not None:
                self.peer.close()
        finally:
            self._closed = True
            while self._cleanups:
                self._cleanups.pop()()

    def __enter__(self) -> Session:
        return self

    def __repr__(self) -> str:
        state = "closed" if self._closed else "broken" if self._broken else "open"
        return f"Session({self.label}, {state})"

    # ---- helpers

    def _tensor(self, key: int | str, *, outputs: bool) -> tuple[int, TensorSpec]:
        specs = self.info().outputs if outputs else self.info().inputs
        kind = "output" if outputs else "input"
        for i, spec in enumerate(specs):
            if key == i or key == spec.name:
                return i, spec
        raise InputError(
            f"model {self.info().name!r} has no {kind} {key!r}; its {kind}s are "
            f"{', '.join(repr(s.name) for s in specs)}"
        )

    def _deadline(self, timeout: float | None) -> float | None:
        t = self.timeout if timeout is _DEFAULT else timeout
        return None if t is None else time.monotonic() + t

    def _check_usable(self) -> None:
        if self._closed:
            raise DeviceLost(f"session with {self.label} is closed")
        if self._broken is not None:
            raise DeviceLost(f"session with {self.label} is unusable: {self._broken}")

    def _fail_timeout(self, what: str, timeout: float | None) -> NoReturn:
        t = self.timeout if timeout is _DEFAULT else timeout
        self.kill()
        hint = getattr(self.peer, "timeout_hint", "")
        self._broken = f"{self.label} did not {what} within {t:g} s and was stopped" + (
            f" ({hint})" if hint else ""
        )
        raise DeviceTimeout(self._broken)

    def _fail_lost(self, when: str) -> NoReturn:
        why = self.peer.failure() if self.peer is not None else "the stream ended"
        self._broken = f"{self.label} stopped {when}: {why}"
        raise DeviceLost(self._broken)

    def _fail_protocol(self, message: str) -> NoReturn:
        self._broken = f"protocol error from {self.label}: {message}"
        raise ProtocolError(self._broken)


#: The fixed part of an ERROR payload: i32 status, u8 request type, u8 reason, u16 reserved, u64 numbers[4].
ERROR_HEAD = struct.Struct("<iBBH4Q")
assert ERROR_HEAD.size == abi.ERROR_TEXT_OFFSET


def error_from_reply(payload: bytes, request: int) -> DeviceError:
    """The :class:`DeviceError` for an ERROR payload, its message worded from the reason, numbers and text."""
    if len(payload) < ERROR_HEAD.size:
        return ProtocolError(f"ERROR reply of {len(payload)} bytes is too short (at least {ERROR_HEAD.size})")
    status, answered, reason, _, *numbers = ERROR_HEAD.unpack_from(payload)
    text = payload[ERROR_HEAD.size :].decode("utf-8", errors="replace")
    detail = abi.error_message(reason, tuple(numbers), text)
    what = MESSAGE_NAMES.get(answered or request, f"message 0x{answered:02x}")
    category = abi.STATUS_CATEGORIES.get(status >> 8, "?")
    return DeviceError(
        f"device rejected {what}: {detail} ({abi.status_name(status)}, status 0x{status:04x}, {category})",
        status,
        answered,
        detail,
    )


def _shape_text(spec: TensorSpec, dims: tuple[int, ...]) -> str:
    """``(1, ?<=512, 64)``: a tensor's shape with its run-time dimensions and their bounds."""
    ks = dims or (-1,) * len(spec.shape)
    return "(" + ", ".join(f"?<={d}" if k >= 0 else str(d) for d, k in zip(spec.shape, ks, strict=True)) + ")"


def _check_array(spec: TensorSpec, value: Any) -> bytes:
    arr = np.asarray(value)
    if arr.dtype != spec.numpy_dtype or arr.shape != spec.shape:
        raise InputError(
            f"input {spec.name!r}: the model expects {spec.numpy_dtype} {spec.shape}, got "
            f"{arr.dtype} {arr.shape}"
        )
    return np.ascontiguousarray(arr).tobytes()


__all__ = [
    "MAX_PAYLOAD",
    "PROTOCOL_VERSION",
    "DeviceError",
    "DeviceInfo",
    "DeviceLost",
    "DeviceTimeout",
    "InputError",
    "KernelCall",
    "KernelStats",
    "Peer",
    "Profile",
    "ProtocolError",
    "Session",
    "TensorSpec",
    "encode_frame",
    "error_from_reply",
]
