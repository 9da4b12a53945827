"""A generated corpus of hostile requests for probing a running simrec server: odd JSON shapes
and encodings, wrong types, image containers and sizes meant to exhaust memory, batch sizes
meant to exhaust time, and odd headers. The fuzz test and `bench/robustness.py` send it to a
real server; each case says only what it is, the caller judges the answers (no 5xx, JSON
errors with `error_code`, bounded memory).
"""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

JSON_TYPE = "application/json"
NO_ANSWER = 0  # the status `send` reports when the server gave no HTTP answer
BOMB_BLOCK_BYTES = 1 << 20  # a bomb's rows are compressed this many bytes at a time


@dataclass(frozen=True)
class HostileCase:
    """One request: what it tries (`kind`: the class of attack), and the bytes sent."""

    kind: str
    name: str
    body: bytes
    headers: dict[str, str | bytes] = field(default_factory=dict)
    method: str = "POST"
    path: str = "/invocations"
    authorized: bool = True


def b64(payload: bytes) -> str:
    return base64.b64encode(payload).decode("ascii")


def _encoded(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width×height pixels that compresses to almost nothing."""
    row = b"\x00" * (1 + (width + 7) // 8)
    rows_per_block = max(1, BOMB_BLOCK_BYTES // len(row))
    compressor = zlib.compressobj(9)
    blocks = [compressor.compress(row * rows_per_block) for _ in range(height // rows_per_block)]
    blocks.append(compressor.compress(row * (height % rows_per_block)))
    data = b"".join(blocks) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def ico_holding(png: bytes) -> bytes:
    """An ICO whose one entry is `png` (Pillow decodes it while *opening* the ICO)."""
    directory = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return directory + entry + png


def hostile_images(rng: random.Random) -> dict[str, bytes]:
    """Image payloads by name: bombs in several containers, odd modes, multi-frame, broken."""
    noise = np.random.default_rng(rng.randrange(2**32))
    small = Image.fromarray(noise.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    big_white = Image.new("L", (6000, 6000), 255)
    frames = [Image.new("RGB", (64, 64), (i * 40 % 255, 0, 0)) for i in range(6)]
    jpeg = _encoded(small, "JPEG")
    return {
        "png bomb 20000x20000": png_bomb(20000, 20000),
        "png bomb 1x90000000": png_bomb(1, 90_000_000 // 1024 * 1024),
        "ico holding a 9000x9000 png": ico_holding(_encoded(Image.new("L", (9000, 9000)), "PNG")),
        "ico holding a small png": ico_holding(_encoded(small, "PNG")),
        "gif bomb 6000x6000": _encoded(big_white, "GIF"),
        "webp 6000x6000": _encoded(big_white, "WEBP", lossless=True, quality=0),
        "tiff": _encoded(small, "TIFF"),
        "bmp": _encoded(small, "BMP"),
        "animated gif": _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "apng": _encoded(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "cmyk jpeg": _encoded(small.convert("CMYK"), "JPEG"),
        "16-bit png": _encoded(Image.new("I;16", (20, 20), 30000), "PNG"),
        "palette png with transparency": _encoded(small.convert("P"), "PNG", transparency=0),
        "1x1 png": _encoded(Image.new("RGB", (1, 1)), "PNG"),
        "truncated jpeg": jpeg[: len(jpeg) // 2],
        "jpeg header only": jpeg[:20],
        "png signature only": b"\x89PNG\r\n\x1a\n",
        "svg text": b'<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999"/>',
        "pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        "zero bytes": b"",
        "random bytes": noise.integers(0, 255, 4096, dtype=np.uint8).tobytes(),
    }


def _json_shapes(good: str, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """Bodies whose JSON structure is unusual: nesting, repeated names, wrong containers."""
    columns = ["image", "k"]
    yield (
        "repeated top-level name",
        (
            b'{"dataframe_split": {"columns": ["image"], "data": [["' + good.encode() + b'"]]},'
            b' "dataframe_split": {"columns": ["k"], "data": [[1]]}}'
        ),
    )
    yield (
        "repeated record name",
        (b'{"dataframe_records": [{"image": "' + good.encode() + b'", "image": 5}]}'),
    )
    yield (
        "repeated column",
        json.dumps(
            {"dataframe_split": {"columns": ["image", "image"], "data": [[good, good]]}}
        ).encode(),
    )
    shapes: dict[str, object] = {
        "columns nested": {"dataframe_split": {"columns": [["image"]], "data": [[good]]}},
        "columns object": {"dataframe_split": {"columns": {"image": 1}, "data": [[good]]}},
        "columns string": {"dataframe_split": {"columns": "image", "data": [[good]]}},
        "columns null": {"dataframe_split": {"columns": None, "data": [[good]]}},
        "columns numbers": {"dataframe_split": {"columns": [1, 2], "data": [[good, 1]]}},
        "data object": {"dataframe_split": {"columns": ["image"], "data": {"image": good}}},
        "data string": {"dataframe_split": {"columns": ["image"], "data": good}},
        "data ragged": {"dataframe_split": {"columns": columns, "data": [[good], [good, 1, 2]]}},
        "data triple nested": {"dataframe_split": {"columns": ["image"], "data": [[[good]]]}},
        "split with index": {
            "dataframe_split": {"index": [{"a": 1}], "columns": ["image"], "data": [[good]]}
        },
        "split not an object": {"dataframe_split": [[good]]},
        "split empty object": {"dataframe_split": {}},
        "records of lists": {"dataframe_records": [[good, 1]]},
        "records of strings": {"dataframe_records": [good]},
        "records an object": {"dataframe_records": {"image": good}},
        "records nested values": {"dataframe_records": [{"image": {"image": good}, "k": [1]}]},
        "records mixed": {"dataframe_records": [{"image": good}, [good], None]},
        "inputs nested": {"inputs": {"image": {"nested": [good]}}},
        "inputs list of objects": {"inputs": [{"image": good}]},
        "inputs ragged columns": {"inputs": {"image": [good, good], "k": [1]}},
        "inputs scalar": {"inputs": good},
        "inputs list of lists": {"inputs": [[good]]},
        "instances objects": {"instances": [{"image": good, "k": "x"}]},
        "instances nested": {"instances": [[[[good]]]]},
        "params nested": {"dataframe_records": [{"image": good}], "params": {"a": {"b": [1]}}},
        "params thumbnails list": {
            "dataframe_records": [{"image": good}],
            "params": {"thumbnails": [True]},
        },
        "params unknown": {"dataframe_records": [{"image": good}], "params": {"k": 1e308}},
        "empty object": {},
        "null": None,
        "number": 3,
        "string": "dataframe_split",
        "list": [good],
    }
    for name, body in shapes.items():
        yield name, json.dumps(body).encode()
    depth = rng.choice([1000, 5000, 100_000])
    yield f"nested {depth} deep", b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
    yield "nested objects", b'{"inputs": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3000 + b"}"
    yield "NaN", b'{"dataframe_records": [{"image": NaN, "k": Infinity}]}'
    yield "huge number", b'{"dataframe_records": [{"image": "x", "k": 1e999}]}'
    yield "huge integer", b'{"dataframe_records": [{"image": "x", "k": ' + b"9" * 4000 + b"}]}"
    yield "empty body", b""
    yield "whitespace body", b"   \n"
    yield "trailing garbage", json.dumps({"inputs": {"image": [good]}}).encode() + b" }{"


def _types(good: str) -> Iterator[tuple[str, object]]:
    """Rows with values of the wrong type in every column either model reads."""
    for label, value in {
        "int": 7,
        "float": 2.5,
        "bool": True,
        "null": None,
        "list": [good],
        "object": {"b64": good},
        "empty string": "",
        "huge int": 10**30,
        "negative": -1,
    }.items():
        yield f"image {label}", {"dataframe_records": [{"image": value}]}
        yield f"k {label}", {"dataframe_records": [{"image": good, "k": value}]}
        yield f"categories {label}", {"dataframe_records": [{"image": good, "categories": value}]}
    yield "k string of digits", {"dataframe_records": [{"image": good, "k": "3"}]}
    yield "unknown column", {"dataframe_records": [{"image": good, "colour": "red"}]}
    yield "categories unknown", {"dataframe_records": [{"image": good, "categories": "nope"}]}
    yield "categories commas", {"dataframe_records": [{"image": good, "categories": ",,,"}]}


def _encodings(good: str) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    body = json.dumps({"dataframe_records": [{"image": good}]})
    yield "utf-16 with BOM", body.encode("utf-16"), {}
    yield "utf-16 declared", body.encode("utf-16"), {"Content-Type": f"{JSON_TYPE}; charset=utf-16"}
    yield "utf-32", body.encode("utf-32"), {}
    yield "utf-8 BOM", b"\xef\xbb\xbf" + body.encode(), {}
    yield "latin-1 string", '{"dataframe_records": [{"image": "é"}]}'.encode("latin-1"), {}
    yield "invalid utf-8 in string", b'{"dataframe_records": [{"image": "\xc3\x28"}]}', {}
    yield "lone surrogate escape", b'{"dataframe_records": [{"image": "\\ud800"}]}', {}
    yield "escaped null", b'{"dataframe_records": [{"image": "\\u0000' + good.encode() + b'"}]}', {}
    yield "raw null byte", b'{"dataframe_records": [{"image": "\x00"}]}', {}
    yield "unicode column name", '{"dataframe_records": [{"imäge": "x"}]}'.encode(), {}
    yield "gzip body", zlib.compress(body.encode()), {"Content-Encoding": "gzip"}
    yield (
        "data url",
        json.dumps({"dataframe_records": [{"image": "data:image/png;base64," + good}]}).encode(),
        {},
    )
    yield (
        "base64 with newlines",
        json.dumps(
            {
                "dataframe_records": [
                    {"image": "\n".join(good[i : i + 60] for i in range(0, len(good), 60))}
                ]
            }
        ).encode(),
        {},
    )
    yield (
        "urlsafe base64",
        json.dumps(
            {"dataframe_records": [{"image": good.replace("+", "-").replace("/", "_")}]}
        ).encode(),
        {},
    )


def _headers() -> Iterator[tuple[str, dict[str, str | bytes], bool]]:
    """(name, headers, send the right token too)."""
    yield "no content type", {"Content-Type": ""}, True
    yield "text/plain", {"Content-Type": "text/plain"}, True
    yield "csv", {"Content-Type": "text/csv"}, True
    yield "parquet", {"Content-Type": "application/x-parquet"}, True
    yield "content type with params", {"Content-Type": f"{JSON_TYPE}; format=pandas-split"}, True
    yield "content type upper case", {"Content-Type": "APPLICATION/JSON"}, True
    yield "content type garbage", {"Content-Type": ";;;=\x7f"}, True
    yield "no token", {}, False
    yield "basic auth", {"Authorization": "Basic dXNlcjpwYXNz"}, False
    yield "bearer tab", {"Authorization": "Bearer\tsomething"}, False
    yield "bearer wrong", {"Authorization": "Bearer " + "x" * 32}, False
    yield "bearer huge", {"Authorization": "Bearer " + "x" * 6000}, False
    yield "bearer latin-1", {"Authorization": "Bearer \xe9\xe9\xe9".encode("latin-1")}, False
    yield "bearer no space", {"Authorization": "Bearer"}, False
    yield "many headers", {f"X-Pad-{i}": "y" * 50 for i in range(80)}, True
    yield "accept xml", {"Accept": "application/xml"}, True


def hostile_corpus(
    good_image: bytes, model: str, seed: int = 0, max_rows: int = 64
) -> list[HostileCase]:
    """Every class of hostile request, for `model` ("fashion" or "style"), seeded."""
    rng = random.Random(f"{model}-{seed}")
    good = b64(good_image)
    cases: list[HostileCase] = []

    def add(kind: str, name: str, body: object, **options: object) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": JSON_TYPE, **options.pop("headers", {})}  # type: ignore[dict-item]
        headers = {key: value for key, value in headers.items() if value}
        cases.append(HostileCase(kind, f"{model}: {name}", payload, headers, **options))  # type: ignore[arg-type]

    for name, body in _json_shapes(good, rng):
        add("json shape", name, body)
    for name, body in _types(good):
        add("type", name, body)
    for name, body, headers in _encodings(good):
        add("encoding", name, body, headers=headers)
    images = hostile_images(rng)
    for name, payload in images.items():
        add("image", name, {"dataframe_records": [{"image": b64(payload), "k": 2}]})
        add("image", f"{name} beside a good one", {"inputs": {"image": [good, b64(payload)]}})
    tiny = b64(_encoded(Image.new("RGB", (8, 8), (200, 10, 10)), "PNG"))
    medium = b64(_encoded(Image.new("RGB", (3000, 3000), (0, 90, 0)), "PNG"))
    for rows in sorted({0, 1, max_rows, max_rows + 1, 500, 2000, rng.randrange(2, max_rows)}):
        add("batch", f"{rows} tiny images", {"inputs": {"image": [tiny] * rows}})
    add("batch", "budget: many medium images", {"inputs": {"image": [medium] * max_rows}})
    add("batch", "2000 empty strings", {"inputs": {"image": [""] * 2000}})
    for name, headers, authorized in _headers():
        add("header", name, {"inputs": {"image": [good]}}, headers=headers, authorized=authorized)
    for method, path in [
        ("GET", "/invocations"),
        ("PUT", "/invocations"),
        ("DELETE", "/invocations"),
        ("POST", "/invocations/"),
        ("POST", "/../invocations"),
        ("POST", "/%2e%2e/invocations"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("POST", "/ping"),
        ("GET", "/nowhere"),
    ]:
        add("path", f"{method} {path}", {"inputs": {"image": [good]}}, method=method, path=path)
    mutate: list[Callable[[bytes], bytes]] = [
        lambda body: body[: rng.randrange(len(body))],
        lambda body: body.replace(b'"', b"'", 1),
        lambda body: body.replace(b"image", b"IMAGE"),
        lambda body: body.replace(b"[", b"[[", 1),
        lambda body: body.replace(b"}", b"", 1),
        lambda body: bytes(byte ^ 0x20 if rng.random() < 0.01 else byte for byte in body),
    ]
    base = json.dumps({"dataframe_records": [{"image": good, "k": 3}]}).encode()
    for number in range(40):
        add("mutation", f"mutation {number}", rng.choice(mutate)(base))
    return cases


def resident_bytes(pid: int, field: str = "VmRSS") -> int:
    """The resident set size of process `pid` (Linux /proc), in bytes; `VmHWM`: its peak."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} for process {pid}")


def reset_peak(pid: int) -> None:
    """Reset the peak resident size (VmHWM) of `pid` to its current one (Linux ≥ 4.0)."""
    with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def send(client: object, url: str, token: str, case: HostileCase) -> tuple[int, bytes]:
    """Send `case` with an httpx.Client; (status, body), status 0 when no answer came (a reset
    connection, a timeout). The token goes along when the case is authorized and names no
    Authorization header of its own."""
    import httpx

    headers = dict(case.headers)
    if case.authorized and "Authorization" not in headers:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = client.request(  # type: ignore[attr-defined]
            case.method, url + case.path, content=case.body, headers=headers
        )
    except (httpx.TransportError, httpx.TimeoutException) as error:
        return NO_ANSWER, repr(error).encode()
    return response.status_code, response.content


def send_whole_body(
    url: str, token: str, body: bytes, path: str = "/invocations", timeout: float = 60
) -> tuple[int, bytes]:
    """POST `body` with http.client, which (like curl and requests) writes the whole body
    before it reads the answer: a server that answers an oversized body by resetting the
    connection mid-upload shows as an error here, where httpx would still read an early
    answer. (status, answer body)."""
    import http.client
    from urllib.parse import urlsplit

    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=timeout)
    try:
        connection.request(
            "POST",
            path,
            body=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": JSON_TYPE},
        )
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def is_json_error(body: bytes) -> bool:
    """Whether `body` is simrec's error shape: a JSON object with a string `error_code`."""
    try:
        payload = json.loads(body)
    except ValueError:
        return False
    return isinstance(payload, dict) and isinstance(payload.get("error_code"), str)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """`simrec serve` as a separate process on 127.0.0.1 (what a client or attacker sees)."""

    process: object
    url: str
    token: str
    log_file: object  # what the server prints goes here, never into a pipe that could fill

    @property
    def pid(self) -> int:
        return self.process.pid  # type: ignore[attr-defined]

    def resident_bytes(self) -> int:
        return resident_bytes(self.pid)

    def peak_growth(self, call: Callable[[], object]) -> tuple[object, int]:
        """`call()`'s result and how far the server's resident memory rose above where it was
        at the start while it ran (its peak, not what is left afterwards)."""
        before = self.resident_bytes()
        reset_peak(self.pid)
        result = call()
        return result, resident_bytes(self.pid, "VmHWM") - before

    def stop(self, timeout: float = 30) -> str:
        """SIGTERM, wait, and return what the server printed."""
        import subprocess

        process: subprocess.Popen = self.process  # type: ignore[assignment]
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return self.output()

    def output(self) -> str:
        self.log_file.seek(0)  # type: ignore[attr-defined]
        return self.log_file.read().decode("utf-8", "replace")  # type: ignore[attr-defined]


def start_server(
    model_uri: str,
    token_file: str,
    token: str,
    settings_args: list[str],
    env: dict[str, str],
    ready_timeout: float = 240,
) -> ServerProcess:
    """Start `python -m simrec.cli serve` on a free port and wait until /ping answers."""
    import subprocess
    import sys
    import tempfile
    import time

    import httpx

    port = free_port()
    log_file = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the ServerProcess)
    process = subprocess.Popen(
        [sys.executable, "-m", "simrec.cli", "serve", "--model-uri", model_uri, "--port",
         str(port), "--token-file", token_file, *settings_args],
        env=env, stdout=log_file, stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = ServerProcess(process, f"http://127.0.0.1:{port}", token, log_file)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stop()}")
        try:
            if httpx.get(f"{server.url}/ping", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{server.url} did not come up in {ready_timeout} s: {server.stop()}")
