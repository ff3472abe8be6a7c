"""Project commands: `python -m serving build-model | check CONFIG [--k8s KIND] | --version`."""

from __future__ import annotations

import argparse
import sys

from serving import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving")
    parser.add_argument("--version", action="version", version=f"serving {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build-model", help="build the embedded tiny model into the cache if missing")
    check_cmd = sub.add_parser(
        "check",
        help="every rule serve run and the Kubernetes renderer apply to a config file (serving/check.py)",
    )
    check_cmd.add_argument("config")
    check_cmd.add_argument(
        "--k8s",
        metavar="KIND",
        action="append",
        help="also hold the file to the renderer's rules for this kind (cpu, single-gpu, multi-node); "
        "default: the kinds the repository renders this file with, none for any other file",
    )
    args = parser.parse_args(argv)

    if args.command == "build-model":
        from serving.models.tiny_llama import ensure_tiny_llama

        print(f"model: {ensure_tiny_llama()}")
        return 0
    if args.command == "check":
        from serving.check import check, k8s_kinds

        known = k8s_kinds()
        for kind in args.k8s or []:
            if kind not in known:
                print(f"--k8s {kind}: the renderer has no such kind (known: {', '.join(known)})", file=sys.stderr)
                return 2
        report = check(args.config, args.k8s)
        for note in report.notes:
            print(f"note: {note}", file=sys.stderr)
        if report.errors:
            print(f"invalid config in {args.config}:", file=sys.stderr)
            for error in report.errors:
                print(f"  {error}", file=sys.stderr)
            return 2
        print(f"{args.config}: ok ({'; '.join(report.checked)})")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
