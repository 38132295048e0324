"""The battery of malformed requests the inference service must answer with a 4xx, shared
by the FastAPI-app tests and the real-Serve tests.

A plain module, not a test module: import it as ``from tests.malformed_requests import ...``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from tests.serving_http_helpers import MAX_BODY_BYTES, MAX_ROWS, MODEL_NAME, NUM_FEATURES


@dataclass(frozen=True)
class MalformedCase:
    """One bad request and the status it must get."""

    label: str
    method: str
    path: str
    expected_status: int
    """What the app answers. In front of Serve, HAProxy answers requests whose headers do
    not fit its 16 KiB buffer (``ingress_may_refuse``) with its own plain-text 400."""
    content: bytes | None = None
    headers: dict[str, str | bytes] | list[tuple[str, str]] = field(
        default_factory=lambda: {"content-type": "application/json"}
    )
    ingress_may_refuse: bool = False


def malformed_requests(
    num_features: int = NUM_FEATURES,
    model_name: str = MODEL_NAME,
    max_rows: int = MAX_ROWS,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> list[MalformedCase]:
    """More than 200 malformed requests against /predict and the v2 routes, each with the
    4xx it must get: bad JSON, wrong shapes and types, NaN/inf, empty, huge, unknown model."""
    cases: list[MalformedCase] = []
    row = [0.5] * num_features
    infer = f"/v2/models/{model_name}/infer"

    def predict_json(label: str, text: str, status: int = 422) -> None:
        cases.append(MalformedCase(label, "POST", "/predict", status, text.encode()))

    def infer_json(label: str, body: object, status: int = 422, path: str = infer) -> None:
        cases.append(MalformedCase(label, "POST", path, status, json.dumps(body).encode()))

    def tensor(**overrides: object) -> dict:
        base = {"name": "input", "shape": [1, num_features], "datatype": "FP32", "data": row}
        return {**base, **overrides}

    # Not JSON at all: 400.
    for index, text in enumerate(
        [
            "{",
            '{"instances": [[1, 2]',
            '{"instances": [[1, 2,]]}',
            "{'instances': [[1]]}",
            '{"instances": [[1 2]]}',
            "instances=1",
            '{"instances": [[01]]}',
            '{"instances": [[.5]]}',
            '{"instances": [[+1]]}',
            '{"instances": [[0x10]]}',
            '{"instances": [["a]]}',
            '{"instances" [[1]]}',
            "[" * 10 + "]" * 9,
            '{"instances": [[1]]}}',
            '{"a": 1} {"b": 2}',
            "\x00\x01\x02",
            '{"instances": [[1e]]}',
            '{"instances": [[-]]}',
            '{"instances": tru}',
            '{"instances": [[nan]]}',
        ]
    ):
        predict_json(f"bad json {index}", text, 400)
        if index % 2 == 0:
            cases.append(MalformedCase(f"v2 bad json {index}", "POST", infer, 400, text.encode()))
    cases.append(MalformedCase("bad utf-8", "POST", "/predict", 400, b'{"instances": "\xff\xfe"}'))
    deep = "[" * 5000 + "]" * 5000
    predict_json("nesting too deep", '{"instances": ' + deep + "}", 400)
    predict_json("integer too long", '{"instances": [[' + "9" * 5000 + "]]}", 400)

    # Valid JSON, wrong top level: 422.
    for index, text in enumerate(
        ["null", "[]", "[[1, 2]]", '"instances"', "1", "true", "{}", '{"instance": [[1]]}']
    ):
        predict_json(f"wrong top level {index}", text)
    predict_json("extra field", json.dumps({"instances": [row], "extra": 1}))

    # Empty.
    predict_json("empty batch", json.dumps({"instances": []}))
    predict_json("empty row", json.dumps({"instances": [[]]}))
    predict_json("null instances", json.dumps({"instances": None}))
    cases.append(MalformedCase("empty body", "POST", "/predict", 422, b""))

    # Wrong feature counts, ragged rows, wrong nesting.
    for count in [
        1,
        2,
        8,
        32,
        num_features - 2,
        num_features - 1,
        num_features + 1,
        2 * num_features,
    ]:
        predict_json(f"{count} features", json.dumps({"instances": [[0.5] * count]}))
        predict_json(
            f"second row {count} features", json.dumps({"instances": [row, [0.5] * count]})
        )
    predict_json("flat instances", json.dumps({"instances": row}))
    predict_json("3-d instances", json.dumps({"instances": [[row]]}))
    predict_json("instances object", json.dumps({"instances": {"a": row}}))
    predict_json("instances string", json.dumps({"instances": "0.5, 0.5"}))
    predict_json("rows are objects", json.dumps({"instances": [{"x": 1}]}))

    # Wrong value types at several positions.
    bad_values = {"string": "1.0", "bool": True, "null": None, "object": {}, "list": [1.0]}
    for kind, value in bad_values.items():
        for position in (0, 1, num_features // 2, num_features - 1):
            bad_row = list(row)
            bad_row[position] = value
            predict_json(f"{kind} at {position}", json.dumps({"instances": [row, bad_row]}))

    # Non-finite and out of float32 range.
    for token in ["NaN", "Infinity", "-Infinity", "1e309", "-1e400", "3.5e38", "-4e38"]:
        for position in (0, num_features - 1):
            values = ["0.5"] * num_features
            values[position] = token
            predict_json(f"{token} at {position}", '{"instances": [[' + ", ".join(values) + "]]}")

    # Too many rows (under the body limit), and bodies over the limit.
    predict_json(
        f"{max_rows + 1} rows", json.dumps({"instances": [[0] * num_features] * (max_rows + 1)})
    )
    predict_json(
        f"{max_rows * 4} rows", json.dumps({"instances": [[0] * num_features] * (max_rows * 4)})
    )
    over_limit = b'{"instances": [[' + b"0," * (max_body_bytes // 2) + b"0]]}"
    cases.append(MalformedCase("body over the limit", "POST", "/predict", 413, over_limit))
    cases.append(MalformedCase("v2 body over the limit", "POST", infer, 413, over_limit))

    # Content types.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "application/xml"]:
        body = json.dumps({"instances": [row]}).encode()
        cases.append(
            MalformedCase(
                f"content type {content_type}",
                "POST",
                "/predict",
                415,
                body,
                {"content-type": content_type},
            )
        )
        cases.append(
            MalformedCase(
                f"v2 content type {content_type}",
                "POST",
                infer,
                415,
                body,
                {"content-type": content_type},
            )
        )
    cases.append(
        MalformedCase(
            "no content type",
            "POST",
            "/predict",
            415,
            json.dumps({"instances": [row]}).encode(),
            {},
        )
    )

    # Request ids.
    for label, value in [("space", "a b"), ("too long", "x" * 129), ("tab", "a\tb"), ("empty", "")]:
        headers = {"content-type": "application/json", "x-request-id": value}
        cases.append(
            MalformedCase(
                f"x-request-id {label}",
                "POST",
                "/predict",
                400,
                json.dumps({"instances": [row]}).encode(),
                headers,
            )
        )
    for label, value in [("non-utf-8", b"\xff\xfe"), ("latin-1", "caf\xe9".encode("latin-1"))]:
        cases.append(
            MalformedCase(
                f"x-request-id {label}",
                "POST",
                "/predict",
                400,
                json.dumps({"instances": [row]}).encode(),
                {"content-type": "application/json", "x-request-id": value},
            )
        )
    for header in ("serve-multiplexed-model-id", "x-request-timeout-seconds", "x-anything"):
        cases.append(
            MalformedCase(
                f"{header} not utf-8",
                "POST",
                "/predict",
                400,
                json.dumps({"instances": [row]}).encode(),
                {"content-type": "application/json", header: b"\xc3\x28"},
            )
        )
    # Header limits (431, before the app reads anything).
    for count in (70, 100):
        many = [("content-type", "application/json")] + [(f"x-h{i}", "1") for i in range(count)]
        cases.append(
            MalformedCase(
                f"{count} extra headers", "POST", "/predict", 431, b"{}", many, count > 90
            )
        )
    for size, path in ((12_000, "/predict"), (65_536, "/v2"), (1_000_000, "/predict")):
        cases.append(
            MalformedCase(
                f"a {size}-byte header",
                "POST" if path == "/predict" else "GET",
                path,
                431,
                b"{}" if path == "/predict" else None,
                {"content-type": "application/json", "x-big": "a" * size},
                ingress_may_refuse=size > 16_000,
            )
        )
    cases.append(
        MalformedCase(
            "content-length not a number",
            "POST",
            "/predict",
            400,
            b"{}",
            {"content-type": "application/json", "content-length": "2x"},
        )
    )
    infer_json("v2 id with space", {"id": "a b", "inputs": [tensor()]})
    infer_json("v2 id too long", {"id": "x" * 129, "inputs": [tensor()]})
    infer_json("v2 id number", {"id": 7, "inputs": [tensor()]})

    # v2 tensors.
    infer_json("v2 no inputs", {"inputs": []})
    infer_json("v2 missing inputs", {"id": "a"})
    infer_json("v2 inputs object", {"inputs": tensor()})
    infer_json("v2 two inputs", {"inputs": [tensor(), tensor()]})
    infer_json("v2 unknown input name", {"inputs": [tensor(name="x")]})
    infer_json("v2 missing name", {"inputs": [{k: v for k, v in tensor().items() if k != "name"}]})
    infer_json("v2 missing data", {"inputs": [{k: v for k, v in tensor().items() if k != "data"}]})
    infer_json(
        "v2 missing shape", {"inputs": [{k: v for k, v in tensor().items() if k != "shape"}]}
    )
    infer_json("v2 extra field", {"inputs": [tensor(extra=1)]})
    for datatype in ["FP64", "FP16", "INT32", "INT64", "BOOL", "BYTES", "fp32", ""]:
        infer_json(f"v2 datatype {datatype!r}", {"inputs": [tensor(datatype=datatype)]})
    for shape in [
        [num_features],
        [1],
        [1, num_features, 1],
        [],
        [0, num_features],
        [-1, num_features],
        [1, num_features - 1],
        [1, num_features + 1],
        [2, num_features],
        [max_rows + 1, num_features],
        [1.0, num_features],
        ["1", num_features],
        [True, num_features],
    ]:
        infer_json(f"v2 shape {shape}", {"inputs": [tensor(shape=shape)]})
    infer_json("v2 data too short", {"inputs": [tensor(data=row[:-1])]})
    infer_json("v2 data too long", {"inputs": [tensor(data=[*row, 0.5])]})
    infer_json("v2 nested rows mismatch", {"inputs": [tensor(shape=[2, num_features], data=[row])]})
    infer_json(
        "v2 nested ragged", {"inputs": [tensor(shape=[2, num_features], data=[row, row[:-1]])]}
    )
    infer_json("v2 nested mixed", {"inputs": [tensor(data=[row[0], row[1:]])]})
    infer_json("v2 data 3-d", {"inputs": [tensor(data=[[row]])]})
    infer_json("v2 data object", {"inputs": [tensor(data={"a": 1})]})
    for kind, value in bad_values.items():
        for position in (0, num_features - 1):
            data = list(row)
            data[position] = value
            infer_json(f"v2 {kind} at {position}", {"inputs": [tensor(data=data)]})
    for token in ["NaN", "Infinity", "-Infinity", "1e309", "3.5e38"]:
        values = ", ".join(["0.5"] * (num_features - 1) + [token])
        text = '{"inputs": [{"name": "input", "shape": [1, %d], "datatype": "FP32", "data": [%s]}]}'
        cases.append(
            MalformedCase(
                f"v2 {token}", "POST", infer, 422, (text % (num_features, values)).encode()
            )
        )
    infer_json("v2 unknown output", {"inputs": [tensor()], "outputs": [{"name": "probabilities"}]})
    infer_json("v2 outputs not a list", {"inputs": [tensor()], "outputs": {"name": "logits"}})

    # Unknown models and versions: 404.
    good = {"inputs": [tensor()]}
    for name in ["nope", model_name.upper(), model_name + "-x", "v2"]:
        infer_json(f"unknown model {name}", good, 404, f"/v2/models/{name}/infer")
        cases.append(MalformedCase(f"metadata of {name}", "GET", f"/v2/models/{name}", 404))
        cases.append(MalformedCase(f"ready of {name}", "GET", f"/v2/models/{name}/ready", 404))
    for version in ["999", "0", "-1", "latest", "1.0", "01", "%C2%B2", "%E2%91%A0", "1%00"]:
        infer_json(
            f"unknown version {version}",
            good,
            404,
            f"/v2/models/{model_name}/versions/{version}/infer",
        )
        cases.append(
            MalformedCase(
                f"metadata of version {version}",
                "GET",
                f"/v2/models/{model_name}/versions/{version}",
                404,
            )
        )
    cases.append(MalformedCase("unknown route", "GET", "/v1/models", 404))
    cases.append(MalformedCase("GET predict", "GET", "/predict", 405))
    cases.append(MalformedCase("DELETE infer", "DELETE", infer, 405))
    cases.append(MalformedCase("POST metadata", "POST", f"/v2/models/{model_name}", 405, b"{}"))
    # Admin without the token.
    cases.append(MalformedCase("promote without token", "POST", "/admin/promote", 401, b"{}"))
    cases.append(
        MalformedCase(
            "rollback with a wrong token",
            "POST",
            "/admin/rollback",
            401,
            b"{}",
            {"content-type": "application/json", "authorization": "Bearer wrong"},
        )
    )
    cases.append(
        MalformedCase(
            "promote with basic auth",
            "POST",
            "/admin/promote",
            401,
            b"{}",
            {"content-type": "application/json", "authorization": "Basic dXNlcjpwYXNz"},
        )
    )
    return cases


def send_raw_case(app, case: MalformedCase):
    """Send ``case`` through httpx's ASGI transport, which passes header bytes unchanged
    (``TestClient`` re-encodes them as UTF-8)."""
    import httpx

    async def send():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await send_case(client, case)

    return asyncio.run(send())


def send_case(client, case: MalformedCase):
    """Send ``case`` with an httpx-compatible client (TestClient or httpx.Client)."""
    return client.request(case.method, case.path, content=case.content, headers=case.headers)
