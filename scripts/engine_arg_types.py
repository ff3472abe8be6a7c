"""Write serving/engine/vllm_engine_args.py from the installed vLLM (imports it: 10-20 s).

    .venv/bin/python scripts/engine_arg_types.py           # rewrite the table
    .venv/bin/python scripts/engine_arg_types.py --check   # exit 1 if it differs (tests/unit does this too)

Run it after changing the vLLM pin: `python -m serving check` reads the table instead of importing vLLM.
"""

from __future__ import annotations

import sys


def current_table() -> str:
    import vllm
    from vllm.engine.arg_utils import AsyncEngineArgs

    from serving.engine.engine_arg_types import dump_table, table_from

    return dump_table(table_from(AsyncEngineArgs, vllm.__version__))


def main(argv: list[str]) -> int:
    from serving.engine.engine_arg_types import TABLE_PATH

    text = current_table()
    if "--check" in argv:
        if TABLE_PATH.read_text() != text:
            print(f"{TABLE_PATH} is stale: run python scripts/engine_arg_types.py", file=sys.stderr)
            return 1
        return 0
    TABLE_PATH.write_text(text)
    print(f"wrote {TABLE_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
