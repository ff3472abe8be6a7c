"""Project commands: `python -m serving build-model | check CONFIG | --version`."""

from __future__ import annotations

import argparse
import sys

from serving import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving")
    parser.add_argument("--version", action="version", version=f"serving {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build-model", help="build the embedded tiny model into the cache if missing")
    check = sub.add_parser("check", help="validate a Serve config file against the config models")
    check.add_argument("config")
    args = parser.parse_args(argv)

    if args.command == "build-model":
        from serving.models.tiny_llama import ensure_tiny_llama

        print(f"model: {ensure_tiny_llama()}")
        return 0
    if args.command == "check":
        from serving.config import ConfigError
        from serving.engine.factory import check_serve_config

        try:
            check_serve_config(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"{args.config}: ok")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
