"""A minimal HTTP client for the tests (stdlib only): (status, headers, parsed JSON or bytes)."""

from __future__ import annotations

import http.client
import json
import uuid
from urllib.parse import urlsplit


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
            timeout: float = 60.0) -> tuple[int, dict, object]:  # fmt: skip
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    if hdrs.get("content-type", "").startswith("application/json"):
        return resp.status, hdrs, json.loads(data)
    return resp.status, hdrs, data


def post_json(url: str, obj) -> tuple[int, dict, object]:  # noqa: ANN001
    return request(url, "POST", json.dumps(obj).encode(), {"Content-Type": "application/json"})


def post_file(url: str, data: bytes, fields: dict | None = None, filename: str = "photo.png"):
    boundary = uuid.uuid4().hex
    parts = []
    for k, v in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")  # fmt: skip
    parts.append(f"--{boundary}--\r\n".encode())
    return request(
        url, "POST", b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
