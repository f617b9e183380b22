"""`python -m gptops.pipeline.torchrun ...`: torchrun (torch.distributed.run, the same arguments), keeping what a
worker's exit code says.

torchrun exits 1 whenever a worker fails, which would read as "the stage rejected its input" (final, the Job fails at
once). Here a worker's own exit code decides: if any worker rejected its input the launcher exits with that code;
any other failure (a worker crashed because a peer node was lost, the rendezvous timed out) exits as a crash, which
the Job retries, and training resumes from its newest checkpoint.
"""

from __future__ import annotations

import logging
import sys

from gptops.api.constants import EXIT_CRASHED, EXIT_STAGE_FAILED

log = logging.getLogger("gptops.pipeline.torchrun")


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except ChildFailedError as failed:
        codes = sorted({f.exitcode for f in failed.failures.values()})
        log.error("Workers failed exit_codes=%s", codes)
        return EXIT_STAGE_FAILED if EXIT_STAGE_FAILED in codes else EXIT_CRASHED
    except Exception:  # noqa: BLE001 - the rendezvous or the agent itself: retried like a crash
        log.exception("torchrun failed")
        return EXIT_CRASHED
    return 0


if __name__ == "__main__":
    sys.exit(main())
