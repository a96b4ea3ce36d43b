"""The runtime ABI: every number and name that generated code, the C runtime and the Python host must agree
on, written down once.

The C headers in ``include/kiln/`` carry the same values for the C side (they document each one where it is
used). :func:`c_assertions` turns this module into C ``_Static_assert`` lines, and
``tests/runtime/test_abi.py`` compiles them against the headers with the real toolchain, so a value changed
on one side only fails the build of that test. Nothing else in kiln spells these numbers out: every layer
imports them from here. This module imports nothing of kiln, so every layer may use it.
"""

from __future__ import annotations

import re
from enum import IntEnum

#: ``KILN_ABI_VERSION`` (model.h): the version of the model descriptor and entry-point contract.
ABI_VERSION = 2
#: ``KILN_MAX_DIMS`` (model.h): at most this many run-time dimensions (named sizes and the sizes computed from
#: them) per model; the entry reads and fills a table of this many int64 values.
MAX_DIMS = 16
#: ``KILN_ALIGNMENT`` (config.h): alignment of the workspace, every input/output buffer, every workspace
#: offset the memory planner hands out, every scratch buffer and every constant in the weights blob.
ALIGNMENT = 64


def align_up(n: int, alignment: int = ALIGNMENT) -> int:
    """``n`` rounded up to a multiple of ``alignment``."""
    return (n + alignment - 1) // alignment * alignment


# ---------------------------------------------------------------------------------------------- element types
#: DLPack type codes (model.h ``KILN_DTYPE_*``).
DTYPE_CODE_INT = 0
DTYPE_CODE_UINT = 1
DTYPE_CODE_FLOAT = 2
DTYPE_CODE_BFLOAT = 4
DTYPE_CODE_BOOL = 6

#: dtype name -> (DLPack type code, bits); lanes are always 1. The names are NumPy's, except ``bfloat16``,
#: which has no NumPy dtype and travels as raw ``uint16``.
DTYPES: dict[str, tuple[int, int]] = {
    "bool": (DTYPE_CODE_BOOL, 8),
    "int8": (DTYPE_CODE_INT, 8),
    "int16": (DTYPE_CODE_INT, 16),
    "int32": (DTYPE_CODE_INT, 32),
    "int64": (DTYPE_CODE_INT, 64),
    "uint8": (DTYPE_CODE_UINT, 8),
    "uint16": (DTYPE_CODE_UINT, 16),
    "uint32": (DTYPE_CODE_UINT, 32),
    "uint64": (DTYPE_CODE_UINT, 64),
    "float16": (DTYPE_CODE_FLOAT, 16),
    "float32": (DTYPE_CODE_FLOAT, 32),
    "float64": (DTYPE_CODE_FLOAT, 64),
    "bfloat16": (DTYPE_CODE_BFLOAT, 16),
}
#: (DLPack type code, bits) -> dtype name: the inverse of :data:`DTYPES`.
DTYPE_NAMES: dict[tuple[int, int], str] = {v: k for k, v in DTYPES.items()}


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of ``dtype`` (a name from :data:`DTYPES`)."""
    return DTYPES[dtype][1] // 8


# ------------------------------------------------------------------------------------------------ symbol names
#: Every global symbol of a compiled model starts with its prefix, so several models link into one program
#: (a firmware image, an exported C project): the descriptor (``kiln_model_t``, model.h) is the prefix
#: itself, the generated entry point ``<prefix>_entry``, the weights blob ``<prefix>_weights`` and, in a
#: firmware image, the model's static memory ``<prefix>_memory`` (``kiln_model_memory_t``, firmware.h).
#: Kernels are internal to the model's object. The default prefix is ``kiln_model``.
DEFAULT_PREFIX = "kiln_model"
_PREFIX_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def check_prefix(prefix: str) -> str:
    """``prefix`` if it is a C identifier (at most 63 characters) that does not start with ``__``;
    ValueError otherwise."""
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix) or prefix.startswith("__"):
        raise ValueError(
            f"symbol prefix {prefix!r} is not a C identifier (letters, digits and '_', not starting with a "
            "digit or '__', at most 63 characters)"
        )
    return prefix


def model_symbol(prefix: str = DEFAULT_PREFIX) -> str:
    """The model descriptor (``const kiln_model_t``)."""
    return check_prefix(prefix)


def entry_symbol(prefix: str = DEFAULT_PREFIX) -> str:
    """The generated entry point (``kiln_model_entry_fn``)."""
    return f"{check_prefix(prefix)}_entry"


def weights_symbol(prefix: str = DEFAULT_PREFIX) -> str:
    """The weights blob (``const uint8_t[]``, ``ALIGNMENT``-aligned)."""
    return f"{check_prefix(prefix)}_weights"


def memory_symbol(prefix: str = DEFAULT_PREFIX) -> str:
    """A firmware image's static memory of the model (``const kiln_model_memory_t``)."""
    return f"{check_prefix(prefix)}_memory"


def weights_section(prefix: str = DEFAULT_PREFIX) -> str:
    """The section of the weights blob (board linker scripts put ``.rodata.kiln_weights.*`` in flash)."""
    return f".rodata.kiln_weights.{check_prefix(prefix)}"


MODEL_SYMBOL = model_symbol()
ENTRY_SYMBOL = entry_symbol()
WEIGHTS_SYMBOL = weights_symbol()
#: The firmware's table of the models it serves (``kiln_firmware_model_t[]``, firmware.h) and their count;
#: the device protocol's SELECT message picks one.
FIRMWARE_MODELS_SYMBOL = "kiln_firmware_models"
FIRMWARE_NUM_MODELS_SYMBOL = "kiln_firmware_num_models"
#: Profiler hooks the generated code calls around each kernel when profiling is on (profiler.h).
PROFILE_BEGIN_SYMBOL = "kiln_profile_begin"
PROFILE_END_SYMBOL = "kiln_profile_end"
#: The thread pool's entry (threads.h): ``void kiln_parallel_for(kiln_parallel_body_fn body, void *context,
#: int64_t n)``, which generated code calls for a ``parallel`` loop on OS targets, with ``body(context,
#: begin, end)`` the outlined loop body.
PARALLEL_FOR_SYMBOL = "kiln_parallel_for"
#: ``KILN_THREAD_STACK_BYTES`` (threads.h): the stack of each worker thread. Code generation keeps the
#: scratch buffers a parallel body allocates on its stack below half of it (else the loop runs serially).
THREAD_STACK_BYTES = 16 << 20
#: ``KILN_THREADS_MAX`` (threads.h): most threads a pool runs.
THREADS_MAX = 256
#: The weak ``int32_t`` a model object defines with its package's default thread count (0: one per online
#: CPU); the Linux runner starts its pool with it unless ``--threads N`` or :data:`THREADS_ENV` says otherwise.
THREADS_DEFAULT_SYMBOL = "kiln_threads_default"
#: Environment variable the Linux runner reads for its thread count (``--threads N`` takes precedence).
THREADS_ENV = "KILN_THREADS"


def check_threads(threads: object) -> int:
    """``threads`` if it is a thread count for the runner's pool: a whole number from 0 (one thread per
    online CPU) to :data:`THREADS_MAX`; ValueError saying so otherwise."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= THREADS_MAX:
        raise ValueError(
            f"threads must be a whole number from 0 (one per online CPU) to {THREADS_MAX}, got {threads!r}"
        )
    return threads


# ------------------------------------------------------------------------------------------------ status codes
#: Status categories (status.h): a status is ``category << 8 | code``.
STATUS_CATEGORIES = {0: "OK", 1: "ARG", 2: "MODEL", 3: "PROTOCOL", 4: "IO", 5: "PLATFORM"}

#: Every status the runtime returns (status.h), by its C name.
STATUS: dict[str, int] = {
    "KILN_OK": 0x000,
    "KILN_ERR_ARG_NULL": 0x101,
    "KILN_ERR_ARG_RANGE": 0x102,
    "KILN_ERR_ARG_ALIGNMENT": 0x103,
    "KILN_ERR_ARG_SIZE": 0x104,
    "KILN_ERR_MODEL_ABI": 0x201,
    "KILN_ERR_MODEL_INVALID": 0x202,
    "KILN_ERR_MODEL_ENTRY": 0x203,
    "KILN_ERR_PROTO_MAGIC": 0x301,
    "KILN_ERR_PROTO_VERSION": 0x302,
    "KILN_ERR_PROTO_CRC": 0x303,
    "KILN_ERR_PROTO_OVERSIZE": 0x304,
    "KILN_ERR_PROTO_TYPE": 0x305,
    "KILN_ERR_PROTO_PAYLOAD": 0x306,
    "KILN_ERR_PROTO_INDEX": 0x307,
    "KILN_ERR_PROTO_SIZE": 0x308,
    "KILN_ERR_PROTO_UNSUPPORTED": 0x309,
    "KILN_ERR_IO_READ": 0x401,
    "KILN_ERR_IO_WRITE": 0x402,
    "KILN_ERR_IO_TRUNCATED": 0x403,
    "KILN_ERR_PLATFORM_UNSUPPORTED": 0x501,
    "KILN_ERR_PLATFORM_FAILED": 0x502,
    "KILN_ERR_PLATFORM_FAULT": 0x503,
}


def status_name(status: int) -> str:
    """``KILN_ERR_PROTO_CRC`` for 0x303; ``category CAT, code N`` for a status the table does not know."""
    for name, value in STATUS.items():
        if value == status:
            return name
    return f"category {STATUS_CATEGORIES.get(status >> 8, status >> 8)}, code {status & 0xFF}"


# ------------------------------------------------------------------------------------------- device protocol
#: Frame layout (endpoint.h): magic, u8 version, u8 type, u16 reserved, u32 payload length; payload; CRC-32.
FRAME_MAGIC = b"KILN"
PROTOCOL_VERSION = 3
FRAME_HEADER_BYTES = 12
FRAME_CRC_BYTES = 4
#: ``KILN_ENDPOINT_MAX_PAYLOAD``: no device sends or accepts a larger payload.
MAX_PAYLOAD = 1 << 20
#: ``KILN_ENDPOINT_MIN_PAYLOAD``: every device accepts payloads of this size.
MIN_PAYLOAD = 256
#: ``KILN_TIME_MAX_NUMBER`` and ``KILN_TIME_MAX_MIN_REPEAT_MS``: bounds of a TIME request.
TIME_MAX_NUMBER = 1 << 30
TIME_MAX_MIN_REPEAT_MS = 3_600_000
#: Size of one ``kiln_profile_record_t`` (profiler.h) and the runner's record buffer.
PROFILE_RECORD_BYTES = 24
PROFILE_MAX_RECORDS = 16384


class Msg(IntEnum):
    """Device-protocol message types (endpoint.h ``KILN_MSG_*``)."""

    INFO = 0x01
    SET_INPUT = 0x02
    RUN = 0x03
    GET_OUTPUT = 0x04
    TIME = 0x05
    PROFILE = 0x06
    QUIT = 0x07
    SELECT = 0x08
    DIMS = 0x09
    REPLY = 0x80  # or-ed into the request type
    ERROR = 0xFF


#: ERROR payload (endpoint.h): i32 status, u8 request type, u8 reason, u16 reserved, u64 numbers[4], then the
#: text, at ``KILN_ERROR_TEXT_OFFSET``, at most ``KILN_ENDPOINT_MESSAGE_BYTES`` of UTF-8.
ERROR_TEXT_OFFSET = 40
ERROR_TEXT_BYTES = 160
#: ``KILN_REASON_*`` (endpoint.h): why an endpoint sent an ERROR reply. A device holds no sentences (they
#: would cost a microcontroller more flash than the protocol code itself); the host words the message from
#: the reason, the reply's four numbers (``{0}``..``{3}``) and its text (``{text}``: a tensor's name, or a
#: fault handler's message). Reason -> (C name, wording).
ERROR_REASONS: dict[int, tuple[str, str]] = {
    0: ("KILN_REASON_TEXT", "{text}"),
    1: (
        "KILN_REASON_MAGIC",
        'frame does not start with the magic "KILN"; skipping bytes up to the next frame',
    ),
    2: ("KILN_REASON_VERSION", "protocol version {0} is not supported; this device speaks version {1}"),
    3: ("KILN_REASON_CRC", "frame CRC-32 mismatch: the frame was corrupted in transit"),
    4: ("KILN_REASON_OVERSIZE", "frame payload of {0} bytes exceeds this device's limit of {1}"),
    5: ("KILN_REASON_TYPE", "unknown message type {0}"),
    6: ("KILN_REASON_PAYLOAD", "payload has {0} bytes, this message needs {1}"),
    7: ("KILN_REASON_INFO_OFFSET", "info offset {0} is past the end of the info record ({1} bytes)"),
    8: ("KILN_REASON_INPUT_INDEX", "input index {0} is out of range: the model has {1}"),
    9: ("KILN_REASON_INPUT_SIZE", "input {3} ({text}) has {2} bytes, the request sends {0}"),
    10: ("KILN_REASON_INPUT_RANGE", "bytes [{0}, {1}) fall outside input {3} ({text}) of {2} bytes"),
    11: ("KILN_REASON_OUTPUT_INDEX", "output index {0} is out of range: the model has {1}"),
    12: ("KILN_REASON_OUTPUT_RANGE", "offset {0} is past the end of output {3} ({text}) of {2} bytes"),
    13: ("KILN_REASON_RUN", "model run failed"),
    14: (
        "KILN_REASON_TIME_ARGS",
        f"TIME needs 1 <= number <= {TIME_MAX_NUMBER}, 1 <= repeat <= {{0}}, "
        f"min_repeat_ms <= {TIME_MAX_MIN_REPEAT_MS}",
    ),
    15: (
        "KILN_REASON_NO_CLOCK",
        "this device has no clock: implement kiln_platform_ticks and kiln_platform_ticks_per_second",
    ),
    16: ("KILN_REASON_CLOCK", "reading the clock failed"),
    17: ("KILN_REASON_NO_PROFILER", "this endpoint was started without a profiler buffer"),
    18: ("KILN_REASON_PROFILE_INDEX", "profile record {0} is past the last one ({1} records)"),
    19: ("KILN_REASON_MODEL_INDEX", "model index {0} is out of range: the device has {1}"),
    20: ("KILN_REASON_SELECT", "selecting the model failed"),
    21: ("KILN_REASON_DIMS_COUNT", "DIMS sent {0} sizes; the model has {1} named run-time dimensions"),
    22: ("KILN_REASON_DIM_RANGE", "run-time dimension {0} is {1}; it must be between 1 and its bound {2}"),
}


def error_message(reason: int, numbers: tuple[int, ...], text: str) -> str:
    """The host's wording of an ERROR reply's reason, numbers and text (:data:`ERROR_REASONS`)."""
    entry = ERROR_REASONS.get(reason)
    if entry is None:
        return f"reason {reason}, numbers {', '.join(map(str, numbers))}" + (f": {text}" if text else "")
    return entry[1].format(*numbers, text=text)


# ------------------------------------------------------------------------------------------------ the runner
#: Exit statuses of the Linux runner (status.h ``KILN_RUNNER_EXIT_*``, returned by runner_main.c) and what
#: each means.
RUNNER_EXIT: dict[str, tuple[int, str]] = {
    "KILN_RUNNER_EXIT_STREAM": (1, "the protocol stream failed"),
    "KILN_RUNNER_EXIT_USAGE": (2, "usage error"),
    "KILN_RUNNER_EXIT_MODEL": (65, "the linked model descriptor is invalid"),
    "KILN_RUNNER_EXIT_PLATFORM": (70, "platform init failed"),
    "KILN_RUNNER_EXIT_MEMORY": (71, "out of memory"),
}
#: Exit status -> meaning.
RUNNER_EXIT_CODES: dict[int, str] = dict(RUNNER_EXIT.values())


def c_assertions() -> str:
    """C source that includes every public header and ``_Static_assert``s each value above against it."""
    checks: list[tuple[str, int]] = [
        ("KILN_ABI_VERSION", ABI_VERSION),
        ("KILN_MAX_DIMS", MAX_DIMS),
        ("KILN_ALIGNMENT", ALIGNMENT),
        ("KILN_DTYPE_INT", DTYPE_CODE_INT),
        ("KILN_DTYPE_UINT", DTYPE_CODE_UINT),
        ("KILN_DTYPE_FLOAT", DTYPE_CODE_FLOAT),
        ("KILN_DTYPE_BFLOAT", DTYPE_CODE_BFLOAT),
        ("KILN_DTYPE_BOOL", DTYPE_CODE_BOOL),
        ("KILN_PROTOCOL_VERSION", PROTOCOL_VERSION),
        ("KILN_FRAME_HEADER_BYTES", FRAME_HEADER_BYTES),
        ("KILN_FRAME_CRC_BYTES", FRAME_CRC_BYTES),
        ("KILN_ENDPOINT_MAX_PAYLOAD", MAX_PAYLOAD),
        ("KILN_ENDPOINT_MIN_PAYLOAD", MIN_PAYLOAD),
        ("KILN_TIME_MAX_NUMBER", TIME_MAX_NUMBER),
        ("KILN_TIME_MAX_MIN_REPEAT_MS", TIME_MAX_MIN_REPEAT_MS),
        ("KILN_PROFILE_MAX_RECORDS", PROFILE_MAX_RECORDS),
        ("KILN_THREAD_STACK_BYTES", THREAD_STACK_BYTES),
        ("KILN_THREADS_MAX", THREADS_MAX),
        ("sizeof(kiln_profile_record_t)", PROFILE_RECORD_BYTES),
        *((f"KILN_MSG_{m.name}", int(m)) for m in Msg),
        ("KILN_ERROR_TEXT_OFFSET", ERROR_TEXT_OFFSET),
        ("KILN_ENDPOINT_MESSAGE_BYTES", ERROR_TEXT_BYTES),
        ("KILN_REASON_COUNT", len(ERROR_REASONS)),
        *((name, reason) for reason, (name, _) in ERROR_REASONS.items()),
        *STATUS.items(),
        *((name, code) for name, (code, _) in RUNNER_EXIT.items()),
        *((f"KILN_CATEGORY_{cat}", n) for n, cat in STATUS_CATEGORIES.items()),
    ]
    lines = [
        "/* Generated by kiln.runtime_c.abi.c_assertions(): the Python ABI table checked against the headers. */",
        '#include "kiln/config.h"',
        '#include "kiln/endpoint.h"',
        '#include "kiln/firmware.h"',
        '#include "kiln/model.h"',
        '#include "kiln/platform.h"',
        '#include "kiln/profiler.h"',
        '#include "kiln/status.h"',
        '#include "kiln/threads.h"',
    ]
    lines += [f'_Static_assert(({c}) == {v}, "{c} != {v} (kiln.runtime_c.abi)");' for c, v in checks]
    # symbol names: each must be a name the headers declare (a misspelled one is an undeclared name)
    for sym in (PROFILE_BEGIN_SYMBOL, PROFILE_END_SYMBOL, PARALLEL_FOR_SYMBOL, THREADS_DEFAULT_SYMBOL):
        lines.append(f'_Static_assert(sizeof(&{sym}) != 0, "{sym} (kiln.runtime_c.abi) is declared");')
    return "\n".join(lines) + "\n"
