"""Verifier worker process: `python -m torl.reward.worker` (started and replaced by pool.py).

It runs math-verify in its main thread, where SIGALRM-based timeouts work. The protocol is
pickled tuples over the process's stdin/stdout: ("ready",) once warm, then one
(outcome, method) reply per (prediction, reference, rel_tol) request. stdout is moved off fd 1
first, so nothing a library prints can corrupt the stream.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import resource
import sys
from multiprocessing.connection import Connection


def main() -> None:
    ap = argparse.ArgumentParser(description="torl reward verifier worker (internal)")
    ap.add_argument("--memory-mb", type=int, required=True)
    ap.add_argument("--inner-timeout", type=int, required=True)
    args = ap.parse_args()

    out_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints go to stderr
    sys.stdout = sys.stderr
    requests = Connection(os.dup(0), writable=False)
    replies = Connection(out_fd, readable=False)

    limit = args.memory_mb * 1024 * 1024
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it warns on every timeout / parse error
    logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)

    from torl.reward.equivalence import Outcome, full_judge

    full_judge("\\frac{x}{2}", "0.5x", 1e-6, args.inner_timeout)  # load sympy's lazy parts, warm caches
    replies.send(("ready",))
    while True:
        try:
            request = requests.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        prediction, reference, rel_tol = request
        try:
            verdict = full_judge(prediction, reference, rel_tol, args.inner_timeout)
            reply = (verdict.outcome.value, verdict.method)
        except MemoryError:
            reply = (Outcome.UNPARSABLE.value, "memory_limit")
        except RecursionError:
            reply = (Outcome.UNPARSABLE.value, "recursion_limit")
        replies.send(reply)


if __name__ == "__main__":
    main()
