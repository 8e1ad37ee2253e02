"""The ``cns`` command: thin. Parse, build configs, call the library.

Each verb group lives in its own module with a ``register(subparsers)`` function; heavy imports happen inside the
handlers so ``cns --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from cns_ray.config import DEFAULT_BASE_MODEL, DEFAULT_STORE_URI
from cns_ray.errors import CNSError

COMMAND_MODULES = (
    "cns_ray.cli.select_cmds",  # calibrate, select
    "cns_ray.cli.learn_cmds",  # learn, submit, jobs
    "cns_ray.cli.concepts_cmds",  # concepts ..., store verify
    "cns_ray.cli.serve_cmds",  # serve, generate
    "cns_ray.cli.demo_cmd",  # demo
    "cns_ray.cli.eval_cmd",  # eval
    "cns_ray.cli.synth_cmd",  # synthesize
)


def add_common(p: argparse.ArgumentParser, *, base_model: bool = True, store: bool = True) -> None:
    """Options every verb takes: where the store is and which base model."""
    if store:
        p.add_argument(
            "--store",
            default=os.environ.get("CNS_STORE", DEFAULT_STORE_URI),
            help="concept store: a folder or s3://bucket/prefix (env CNS_STORE; default %(default)s)",
        )
    if base_model:
        p.add_argument(
            "--base-model",
            default=os.environ.get("CNS_BASE_MODEL", DEFAULT_BASE_MODEL),
            help="'tiny' (embedded, trained on the toy world; alias 'tiny-world'), 'tiny-random' (random weights, for "
            "tests; images are noise), a diffusers folder, or s3://... of one (env CNS_BASE_MODEL; default %(default)s)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cns", description="cns-ray: continual multi-tenant concept learning and serving for diffusion models"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for modname in COMMAND_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        rc = int(args.func(args) or 0)
    except CNSError as e:
        print(f"error: {e}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        rc = 130
    if argv is None and getattr(args, "exit_hard", False):
        exit_now(rc)
    return rc


def exit_now(rc: int) -> None:
    """End the process with ``rc`` right after the Python-level clean-up, skipping C++ static destructors.

    Seen here: 2 of 20 ``cns store verify`` runs aborted at interpreter exit (``terminate called without an active
    exception``, rc 134) once pyarrow 26's thread pools and torch 2.13 were both loaded: a C++ thread still joinable
    while static objects are destroyed. Verbs that set ``exit_hard`` (the store and concept verbs, which start no
    Ray) flush their output, run the atexit handlers and leave with ``os._exit``. Only the console command does
    this; ``main(argv)`` called in-process returns its code as before.
    """
    import atexit

    logging.shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
