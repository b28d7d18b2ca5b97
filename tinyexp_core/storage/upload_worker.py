"""The upload worker process (`python -m tinyexp_core.storage.upload_worker`), started by
`Uploader`: pickled work on stdin, pickled answers on stdout; its log (loguru) on stderr,
which it shares with the process that started it. Anything a library prints goes to
stderr too, so the answers' channel stays clean."""

from __future__ import annotations

import os
import signal
import sys


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # it ends when its input closes
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # print() of any library: to stderr, not into the answers
    from tinyexp_core.storage.uploader import serve

    serve(sys.stdin.buffer, answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
