"""`valence-pipeline emulator ...`: argparse only at import time (the server loads in the handler).

Keys come from the environment only (the SDK's `VALENCE_API_KEY` / `VALSEA_API_KEY`; several
keys comma-separated), never from the command line, which every user of the machine can read
(`ps`, /proc/PID/cmdline). Without any Valsea key the Valsea API answers 503 ("service not
configured"). Faults come from `--faults` or, when the flag is
absent, from `VALENCE_EMULATOR_FAULTS`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

FAULTS_ENV = "VALENCE_EMULATOR_FAULTS"
VALENCE_KEYS_ENV = "VALENCE_API_KEY"
VALSEA_KEYS_ENV = "VALSEA_API_KEY"


def keys_from_env(name: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in os.environ.get(name, "").split(",") if k.strip())


def register(sub: Any) -> None:
    p = sub.add_parser(
        "emulator",
        help="run the local Valence + Valsea API emulator",
        description="Local emulator of the Valence emotion API and the Valsea prosody API "
        "(deterministic stand-in predictions; not an emotion model). Accepted keys come from "
        f"{VALENCE_KEYS_ENV} and {VALSEA_KEYS_ENV} (comma-separated), never from the command line.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8787, help="port; 0 picks a free one (default 8787)")
    p.add_argument(
        "--time-scale", type=float, default=1.0, help="emulated seconds per real second (default 1)"
    )
    p.add_argument(
        "--faults", default=None, help=f"fault spec, e.g. 5xx=0.1,429=0.05,drop=0.02 (env {FAULTS_ENV})"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fault draws (default 0)")
    p.add_argument(
        "--data-dir", type=Path, default=None, help="where uploads are stored (default: a temp dir)"
    )
    p.add_argument(
        "--valsea-credits", type=int, default=1_000_000, help="Valsea credit balance (1 per audio minute)"
    )
    p.add_argument(
        "--retention-s", type=float, default=86400.0, help="emulated seconds results are kept (24 h)"
    )
    p.add_argument(
        "--url-expiry-s", type=float, default=3600.0, help="real seconds a part URL is valid (3600)"
    )
    p.add_argument("--valence-limits", default="10,100,1000,10000", help="per second,minute,hour,day")
    p.add_argument("--valsea-limits", default="10,100,1000,10000", help="per second,minute,hour,day")
    p.add_argument("--min-part-size", type=int, default=5 * 1024 * 1024, help="S3 minimum part size (0: off)")
    p.add_argument(
        "--timeline-shape", choices=("000", "002"), default="000", help="async timeline entry shape"
    )
    p.add_argument("--discrete-shape", choices=("000", "002"), default="002", help="discrete answer shape")
    p.add_argument(
        "--s3-endpoint", default=None, help="S3 endpoint for async uploads (default: our own disk)"
    )
    p.add_argument("--s3-bucket", default="valence-emulator", help="bucket for S3-backed uploads")
    p.add_argument(
        "--s3-public-endpoint",
        default=None,
        help="endpoint that presigned part URLs point at, when clients reach the S3 another way "
        "(e.g. through a WAN-shaping proxy); default: --s3-endpoint",
    )
    p.add_argument("--log-level", default="INFO", help="log level on stderr (default INFO)")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Any:
    from emulator.config import EmulatorConfig, parse_limits
    from emulator.faults import FaultSpec

    valence_keys = keys_from_env(VALENCE_KEYS_ENV)
    valsea_keys = keys_from_env(VALSEA_KEYS_ENV)
    if not valence_keys:
        raise ValueError(
            f"no Valence key: set {VALENCE_KEYS_ENV} (keys are never taken from the command line)"
        )
    faults = args.faults if args.faults is not None else os.environ.get(FAULTS_ENV, "")
    return EmulatorConfig(
        valence_keys=valence_keys,
        valsea_keys=valsea_keys,
        host=args.host,
        port=args.port,
        time_scale=args.time_scale,
        faults=FaultSpec.parse(faults),
        seed=args.seed,
        data_dir=args.data_dir,
        valence_limits=parse_limits(args.valence_limits),
        valsea_limits=parse_limits(args.valsea_limits),
        valsea_credits=args.valsea_credits,
        retention_s=args.retention_s,
        url_expiry_s=args.url_expiry_s,
        min_part_size=args.min_part_size,
        timeline_shape=args.timeline_shape,
        discrete_shape=args.discrete_shape,
        s3_endpoint=args.s3_endpoint,
        s3_bucket=args.s3_bucket,
        s3_public_endpoint=args.s3_public_endpoint,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=str(args.log_level).upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = build_config(args)
    except ValueError as exc:
        print(f"valence-pipeline emulator: {exc}", file=sys.stderr)
        return 2
    if config.host not in {"127.0.0.1", "localhost", "::1"}:
        logging.getLogger("emulator").warning("admin endpoints are unauthenticated; bound to %s", config.host)
    from emulator.server import serve

    serve(config)
    return 0
