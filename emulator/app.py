"""The HTTP surface: `create_app(config)` builds the FastAPI app, `build_asgi(config)` the
callable the server runs: that app behind the streaming API's Socket.IO endpoint
(`/socket.io/`, see `emulator.streaming`), sharing its state (keys, rate limits, ledger).

Valence (header `x-api-key`)::

    POST /v1/discrete/emotion?model=M                multipart `file`, or JSON {"payload": [[...]]}
                                                     (also at /emotionprediction, the quick start's path)
    POST /v1/asynch/emotion/upload/initiate?file_name=F&part_count=N[&model=M]   (GET too: old SDK;
                                                     no model: analysed by the default, 4emotions)
    PUT  <presigned part url>                        raw bytes -> ETag
    POST /v1/asynch/emotion/upload/complete          {"request_id", "upload_id", "parts": [...]}
    GET  /v1/asynch/emotion/status/{request_id}[?comprehensive_output=true]
    GET  /v1/rate-limit/status, /v1/rate-limit/health   (not counted against the limits)

Valsea (header `Authorization: Bearer KEY`)::

    POST /v1/prosody (multipart) -> 202 · GET /v1/prosody/{id} · GET /v1/prosody/{id}/result

Admin (no auth, loopback tool)::

    GET  /health                     liveness
    GET  /_emulator/ledger           billed calls + counts per audio SHA-256
    GET  /_emulator/requests?limit=N request log (keys shown as ids, signatures redacted)
    GET|PUT /_emulator/faults        body {"spec": "5xx=0.1,..."} or the spec as text
    GET|PUT /_emulator/credits       body {"credits": N}
    POST /_emulator/reset            forget jobs, ledger, log, counters; restore faults/credits
    GET  /_emulator/clock · POST /_emulator/clock/advance {"seconds": S}
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from emulator import audio
from emulator.config import EmulatorConfig
from emulator.faults import FaultSpec
from emulator.gate import ASGIApp, Gate, Receive, Scope, Send
from emulator.state import ApiError, EmulatorState, bad_request
from emulator.storage import PartInfo, copy_hashing
from emulator.streaming import socketio_app
from valence_client.models import (
    VALENCE_MODELS,
    CompleteRequest,
    RateLimitStatus,
    RateLimitWindow,
)

log = logging.getLogger(__name__)

DISCRETE_MIN_S = 4.0
DISCRETE_MAX_S = 10.0
DISCRETE_MAX_BYTES = 6 * 1024 * 1024
JSON_PAYLOAD_SAMPLE_RATE = 44100
"""The quick start sends librosa samples at 44.1 kHz; a `sample_rate` field overrides it."""
MAX_BODY_BYTES = 64 * 1024 * 1024
"""Bodies read into memory (discrete JSON, complete) are refused (413) above this."""
VALSEA_MAX_BYTES = 1024 * 1024 * 1024
PROSODY_MODEL = "valsea-prosody"
GRANULARITIES = ("word", "sentence", "utterance")
RESPONSE_FORMATS = ("json", "verbose_json")


class EmulatorApp(FastAPI):
    """FastAPI with the `Gate` (auth, limits, faults, request log) as its outermost layer, so
    the gate receives the server's own `send` (needed to drop connections)."""

    emulator_state: EmulatorState
    emulator_gate: Gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.emulator_gate(scope, receive, send, super().__call__)
        else:
            await super().__call__(scope, receive, send)


def _error_response(exc: ApiError) -> Response:
    if exc.xml:
        inner = "".join(f"<{k}>{v}</{k}>" for k, v in exc.body.items())
        xml = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>{inner}</Error>'
        return Response(xml, status_code=exc.status, media_type="application/xml")
    return JSONResponse(exc.body, status_code=exc.status)


def _refuse_declared_over(request: Request, cap: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise ApiError(413, {"error": f"request body over {cap} bytes"})


async def _read_capped(request: Request, cap: int = MAX_BODY_BYTES) -> bytes:
    _refuse_declared_over(request, cap)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise ApiError(413, {"error": f"request body over {cap} bytes"})
    return bytes(body)


def _owner(request: Request) -> str:
    owner = request.scope.get("state", {}).get("emulator_owner")
    if not owner:  # only reachable if the gate was bypassed
        raise ApiError(401, {"error": "Invalid or missing API key"})
    return str(owner)


def create_app(config: EmulatorConfig) -> EmulatorApp:
    """The emulator as a FastAPI app (state on `app.emulator_state`)."""
    state = EmulatorState(config)
    app = EmulatorApp(
        title="Valence + Valsea emulator",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # No spans or metrics: the emulator is a test tool and must not phone anywhere.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.emulator_state = state
    app.emulator_gate = Gate(state)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"invalid request: {problems}", "error_code": "INVALID_REQUEST"}, 400)

    _valence_routes(app, state)
    _valsea_routes(app, state)
    _admin_routes(app, state)
    return app


def build_asgi(config: EmulatorConfig) -> ASGIApp:
    """What the server runs: the HTTP app with the Socket.IO streaming endpoint in front."""
    app = create_app(config)
    return socketio_app(app, app.emulator_state)


# --------------------------------------------------------------------------- Valence


def _discrete_answer(config: EmulatorConfig, analysis: audio.Analysis, model: str) -> dict[str, Any]:
    result = audio.discrete_result(analysis, model)
    if config.discrete_shape == "000":
        return {"emotions": result.all_predictions, "dominant_emotion": result.main_emotion}
    return result.model_dump()


def _check_discrete_duration(duration: float) -> None:
    if duration < DISCRETE_MIN_S:
        raise bad_request(
            f"audio is {duration:.2f} s; the discrete API needs at least {DISCRETE_MIN_S:g} s",
            "AUDIO_TOO_SHORT",
            min_duration_seconds=DISCRETE_MIN_S,
            actual_duration_seconds=round(duration, 3),
        )
    if duration > DISCRETE_MAX_S:
        raise bad_request(
            f"audio is {duration:.2f} s; the discrete API takes at most {DISCRETE_MAX_S:g} s",
            "AUDIO_TOO_LONG",
            max_duration_seconds=DISCRETE_MAX_S,
            actual_duration_seconds=round(duration, 3),
        )


def _discrete_from_file(upload: UploadFile) -> tuple[audio.Analysis, str, int]:
    upload.file.seek(0, os.SEEK_END)
    size = upload.file.tell()
    upload.file.seek(0)
    if size > DISCRETE_MAX_BYTES:
        duration = audio.probe_duration(upload.file)
        raise bad_request(
            f"file is {size / 1048576:.2f} MB; the discrete API takes at most 6 MB",
            "FILE_TOO_LARGE",
            max_size_mb=6,
            actual_size_mb=round(size / 1048576, 3),
            max_duration_seconds=DISCRETE_MAX_S,
            actual_duration_seconds=round(duration, 3) if duration is not None else None,
        )
    data = upload.file.read()
    try:
        analysis = audio.analyse_file(io.BytesIO(data))
    except audio.AudioDecodeError as exc:
        raise bad_request(f"file is not decodable audio ({exc})", "INVALID_AUDIO") from exc
    return analysis, hashlib.sha256(data).hexdigest(), len(data)


def _discrete_from_json(raw: bytes) -> tuple[audio.Analysis, str, int]:
    try:
        data: Any = json.loads(raw)
        if isinstance(data, str):  # the quick start posts json=json.dumps(event): JSON in a string
            data = json.loads(data)
    except ValueError as exc:
        raise bad_request("body is neither multipart with a `file` nor JSON", "INVALID_REQUEST") from exc
    if not isinstance(data, dict) or not isinstance(data.get("payload"), list):
        raise bad_request('JSON body needs "payload": [[sample, ...]]', "INVALID_REQUEST")
    payload = data["payload"]
    if payload and isinstance(payload[0], list):
        if len(payload) != 1:
            raise bad_request("payload must hold exactly one clip: [[sample, ...]]", "INVALID_REQUEST")
        payload = payload[0]
    rate = data.get("sample_rate", JSON_PAYLOAD_SAMPLE_RATE)
    try:
        samples = np.asarray(payload, dtype=np.float32)
        analysis = audio.analyse_samples(samples, int(rate))
    except (ValueError, TypeError, audio.AudioDecodeError) as exc:
        raise bad_request(f"payload is not a list of numbers ({exc})", "INVALID_AUDIO") from exc
    digest = hashlib.sha256(samples.astype("<f4").tobytes()).hexdigest()
    return analysis, digest, samples.nbytes


def _valence_routes(app: FastAPI, state: EmulatorState) -> None:
    config = state.config

    @app.post("/v1/discrete/emotion")
    @app.post("/emotionprediction")  # the quick start's (older) path
    async def discrete(request: Request, model: str = "4emotions") -> Response:
        owner = _owner(request)
        if model not in VALENCE_MODELS:
            raise bad_request(
                f"unknown model {model!r}; use one of {sorted(VALENCE_MODELS)}", "INVALID_MODEL"
            )
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            _refuse_declared_over(request, MAX_BODY_BYTES)
            async with request.form(max_files=4, max_fields=16) as form:
                upload = form.get("file")
                if not isinstance(upload, UploadFile):
                    raise bad_request("multipart field `file` is required", "INVALID_REQUEST")
                analysis, sha, size = await run_in_threadpool(_discrete_from_file, upload)
        else:
            raw = await _read_capped(request)
            analysis, sha, size = await run_in_threadpool(_discrete_from_json, raw)
        _check_discrete_duration(analysis.duration_s)
        answer = _discrete_answer(config, analysis, model)
        state.record_discrete(owner, sha, analysis.duration_s, size, model)
        return JSONResponse(answer)

    @app.api_route("/v1/asynch/emotion/upload/initiate", methods=["POST", "GET"])
    async def initiate(
        request: Request,
        file_name: str = Query(""),
        part_count: int = Query(...),
        model: str | None = Query(None),
    ) -> Response:
        owner = _owner(request)
        answer = await run_in_threadpool(
            state.initiate, owner, file_name, part_count, model, str(request.base_url)
        )
        return JSONResponse(answer)

    @app.put("/_parts/{upload_id}/{part_number}")
    async def put_part(
        request: Request, upload_id: str, part_number: int, expires: str = "", signature: str = ""
    ) -> Response:
        problem = state.signer.check(upload_id, part_number, expires, signature)
        if problem is not None:
            message = "Request has expired" if problem == "AccessDenied" else "The signature does not match"
            raise ApiError(403, {"Code": problem, "Message": message}, xml=True)
        if not 1 <= part_number <= 10_000:
            raise ApiError(400, {"Code": "InvalidArgument", "Message": "Part number out of range"}, xml=True)
        req = state.upload_for_part(upload_id)
        final = state.local_parts.part_path(req.request_id, part_number)
        tmp = final.with_name(f".{final.name}.{os.urandom(6).hex()}")
        md5, size = hashlib.md5(usedforsecurity=False), 0
        try:
            try:
                f = tmp.open("wb")
            except FileNotFoundError as exc:  # completed (and cleaned up) meanwhile
                raise ApiError(
                    404, {"Code": "NoSuchUpload", "Message": "The upload is complete."}, xml=True
                ) from exc
            with f:
                async for chunk in request.stream():
                    f.write(chunk)
                    md5.update(chunk)
                    size += len(chunk)
                    if size > 5 * 1024**3:
                        raise ApiError(
                            400, {"Code": "EntityTooLarge", "Message": "Part over 5 GiB"}, xml=True
                        )
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        etag = f'"{md5.hexdigest()}"'
        state.record_part(req, part_number, PartInfo(etag=etag, size=size))
        return Response(status_code=200, headers={"ETag": etag})

    @app.post("/v1/asynch/emotion/upload/complete")
    async def complete(request: Request) -> Response:
        owner = _owner(request)
        raw = await _read_capped(request, 4 * 1024 * 1024)
        try:
            body = CompleteRequest.model_validate_json(raw)
        except ValueError as exc:
            raise bad_request(
                f"body must be {{request_id, upload_id, parts: [{{ETag, PartNumber}}]}} ({exc})",
                "INVALID_REQUEST",
            ) from exc
        parts = [(p.PartNumber, p.ETag) for p in body.parts]
        answer = await run_in_threadpool(state.complete, owner, body.request_id, body.upload_id, parts)
        return JSONResponse(answer)

    @app.get("/v1/asynch/emotion/status/{request_id}")
    async def status(request: Request, request_id: str, comprehensive_output: bool = False) -> Response:
        return JSONResponse(state.async_status(_owner(request), request_id, comprehensive_output))

    @app.get("/v1/rate-limit/status")
    async def rate_limit_status(request: Request) -> Response:
        windows = state.valence_limiter.peek(_owner(request))
        body = RateLimitStatus(
            limits={
                w.name: RateLimitWindow(limit=w.limit, remaining=w.remaining, reset=w.reset) for w in windows
            },
            max_audio_size_mb=1024,
            current_usage={w.name: w.used for w in windows},
        )
        wire = body.to_wire()
        wire["limits"]["max_audio_size_mb"] = 1024  # an int on the wire, as documented
        return JSONResponse(wire)

    @app.get("/v1/rate-limit/health")
    async def rate_limit_health(request: Request) -> Response:
        _owner(request)
        return JSONResponse({"status": "healthy", "timestamp": int(time.time())})


# --------------------------------------------------------------------------- Valsea


def _valsea_routes(app: FastAPI, state: EmulatorState) -> None:
    @app.post("/v1/prosody")
    async def submit(request: Request) -> Response:
        owner = _owner(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(400, {"error": "send multipart/form-data with `file` and `model`"})
        async with request.form(max_files=4, max_fields=16) as form:
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(400, {"error": "multipart field `file` is required"})
            if fields.get("model") != PROSODY_MODEL:
                raise ApiError(400, {"error": f"`model` must be {PROSODY_MODEL!r}"})
            granularity = fields.get("granularity") or "utterance"
            if granularity not in GRANULARITIES:
                raise ApiError(400, {"error": f"`granularity` must be one of {', '.join(GRANULARITIES)}"})
            response_format = fields.get("response_format") or "json"
            if response_format not in RESPONSE_FORMATS:
                raise ApiError(
                    400, {"error": f"`response_format` must be one of {', '.join(RESPONSE_FORMATS)}"}
                )
            path = state.incoming_path()
            sha, size = await run_in_threadpool(_save_upload, upload, path)
        if size > VALSEA_MAX_BYTES:
            path.unlink(missing_ok=True)
            raise ApiError(413, {"error": f"file over {VALSEA_MAX_BYTES // 1048576} MB"})
        answer = await run_in_threadpool(
            lambda: state.submit_prosody(
                owner,
                path,
                granularity=granularity,
                response_format=response_format,
                language=fields.get("language") or None,
                sha256=sha,
                size=size,
            )
        )
        return JSONResponse(answer, status_code=202)

    @app.get("/v1/prosody/{job_id}")
    async def job_status(request: Request, job_id: str) -> Response:
        return JSONResponse(state.prosody_status(_owner(request), job_id))

    @app.get("/v1/prosody/{job_id}/result")
    async def job_result(request: Request, job_id: str) -> Response:
        return JSONResponse(state.prosody_result(_owner(request), job_id))


def _save_upload(upload: UploadFile, path: Path) -> tuple[str, int]:
    upload.file.seek(0)
    with open(path, "wb") as dst:
        return copy_hashing(upload.file, dst)


# --------------------------------------------------------------------------- admin


def _admin_routes(app: FastAPI, state: EmulatorState) -> None:
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "timestamp": int(time.time())}

    @app.get("/_emulator/ledger")
    async def ledger() -> dict[str, Any]:
        return state.ledger()

    @app.get("/_emulator/requests")
    async def requests_log(limit: int | None = None) -> dict[str, Any]:
        return {"requests": state.request_log(limit)}

    @app.get("/_emulator/faults")
    async def get_faults() -> dict[str, Any]:
        return {"spec": state.faults.spec.to_text(), "seed": state.config.seed}

    @app.put("/_emulator/faults")
    async def put_faults(request: Request) -> Response:
        raw = (await _read_capped(request, 65536)).decode()
        try:
            data = json.loads(raw) if raw.strip().startswith("{") else {"spec": raw}
            spec = FaultSpec.parse(str(data.get("spec") or ""))
        except ValueError as exc:
            raise ApiError(400, {"error": str(exc)}) from exc
        state.set_faults(spec)
        return JSONResponse({"spec": spec.to_text(), "seed": state.config.seed})

    @app.get("/_emulator/credits")
    async def get_credits() -> dict[str, Any]:
        return {"credits": state.credits}

    @app.put("/_emulator/credits")
    async def put_credits(request: Request) -> Response:
        try:
            credits = int(json.loads(await _read_capped(request, 65536))["credits"])
            state.set_credits(credits)
        except (ValueError, KeyError, TypeError) as exc:
            raise ApiError(400, {"error": 'body must be {"credits": N} with N >= 0'}) from exc
        return JSONResponse({"credits": state.credits})

    @app.post("/_emulator/reset")
    async def reset() -> dict[str, Any]:
        await run_in_threadpool(state.reset)
        return {"status": "reset"}

    @app.get("/_emulator/clock")
    async def clock() -> dict[str, Any]:
        return {"now_s": state.clock.now(), "time_scale": state.clock.time_scale}

    @app.post("/_emulator/clock/advance")
    async def advance(request: Request) -> Response:
        try:
            seconds = float(json.loads(await _read_capped(request, 65536))["seconds"])
            now = state.clock.advance(seconds)
        except (ValueError, KeyError, TypeError) as exc:
            raise ApiError(400, {"error": 'body must be {"seconds": S} with S >= 0'}) from exc
        return JSONResponse({"now_s": now, "time_scale": state.clock.time_scale})
