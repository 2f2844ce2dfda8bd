"""Start bubblewrap as an unprivileged host uid when the executor runs as root.

Why: Linux does not enforce RLIMIT_NPROC for processes whose real uid is host root, and a
bubblewrap sandbox started by root maps its uid 65534 to host root, so a fork bomb inside it would
be limited by nothing but the host's pid space. Started as a distinct unprivileged host uid per
sandbox, the sandbox's processes count against their own limit (and a bomb in one sandbox cannot
starve another).

The catch: an unprivileged bwrap must be able to reach every path it binds, and the interpreter
may live under a root-only directory (/root/.pyenv). So this launcher, still root, makes a private
mount namespace, bind-mounts every source under a fresh tmpfs on /tmp there (visible to this
process tree only), drops to the given uid/gid and execs bwrap with those staged paths.

Run as `python -I -S bwrap_launch.py '<json>'`: standard library only, no torl imports (fast).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

CLONE_NEWNS = 0x00020000
MS_NOSUID = 2
MS_NODEV = 4
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
STAGE = "/tmp"  # replaced by a tmpfs in this process's own mount namespace, never on the host


def staged_path(index: int) -> str:
    """Where bind source number `index` appears for the bwrap started by this launcher."""
    return f"{STAGE}/{index}"


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def main() -> None:
    spec = json.loads(sys.argv[1])
    uid, gid = int(spec["uid"]), int(spec["gid"])
    sources: list[str] = spec["sources"]
    argv: list[str] = spec["argv"]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    # Hold every source open before the tmpfs covers /tmp: a source that lives under /tmp (a
    # checkout or venv there) would otherwise be hidden by the very tmpfs it is staged into.
    held = [(src, os.open(src, os.O_PATH | os.O_CLOEXEC), os.path.isdir(src)) for src in sources]
    _check(libc.mount(b"tmpfs", STAGE.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=1m"), "tmpfs")
    for i, (src, fd, is_dir) in enumerate(held):
        point = staged_path(i)
        if is_dir:
            os.mkdir(point, 0o755)
        else:
            with open(point, "w"):
                pass
        _check(libc.mount(f"/proc/self/fd/{fd}".encode(), point.encode(), None, MS_BIND | MS_REC, None), f"bind {src}")
        os.close(fd)
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)  # real, effective and saved uid: no way back to root, no capabilities left
    os.execv(argv[0], argv)


if __name__ == "__main__":
    try:
        main()
    except OSError as e:
        print(f"bwrap_launch: {e}", file=sys.stderr)
        sys.exit(125)
