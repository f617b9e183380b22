"""Runs inside the vLLM release's own environment (tools/vllm-venv.sh): parses each command line the way `vllm serve`
does, then runs vLLM's own checks on it, without a GPU (CPU platform) and without loading a model.

stdin: a JSON list of argument lists (what follows `vllm serve`). stdout: a JSON list of {"ok": bool, "error": str}.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
# No model is loaded and nothing may be fetched: a hub that cannot be reached. (HF_HUB_OFFLINE=1 would make vLLM
# resolve each model to a local snapshot first, which a check of arguments must not need.)
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"


def check(argv: list[str]) -> dict[str, object]:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.common.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve", exit_on_error=False))
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        return {"ok": False, "error": f"the parser refused {argv}"}
    except Exception as e:  # noqa: BLE001 - every refusal is reported the same way
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    try:
        if getattr(args, "model_tag", None):
            args.model = args.model_tag
        validate_parsed_serve_args(args)
        AsyncEngineArgs.from_cli_args(args)
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return {"ok": True, "error": ""}


def main() -> int:
    json.dump([check(a) for a in json.load(sys.stdin)], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
