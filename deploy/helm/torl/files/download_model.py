# Model download of the torl chart's init container (torl.modelDownloadInit): fetch
# MODEL_NAME@MODEL_REVISION into MODEL_DIR once. Pods sharing the cache volume serialise on a lock
# file; whoever finds the completion marker skips the download.
import fcntl
import os
import pathlib

from huggingface_hub import snapshot_download

target = pathlib.Path(os.environ["MODEL_DIR"])
target.mkdir(parents=True, exist_ok=True)
marker = target / ".torl-download-complete"
with open(target.parent / (target.name + ".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if marker.exists():
        print(f"model cached at {target}", flush=True)
    else:
        snapshot_download(repo_id=os.environ["MODEL_NAME"], revision=os.environ["MODEL_REVISION"],
                          local_dir=str(target))
        marker.write_text(os.environ["MODEL_REVISION"] + "\n")
        print(f"model downloaded to {target}", flush=True)
