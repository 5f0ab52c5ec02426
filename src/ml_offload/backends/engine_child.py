"""Child-process entry point: runs llama.cpp's own HTTP server through `xllamacpp`.

Started by `LlamaCppProcess` as `python -m ml_offload.backends.engine_child JSON`. It prints
`READY <url>` on stdout as soon as the engine listens (so the parent needs no polling), then
lives until its stdin closes (the parent died or asked it to stop) or it gets a signal.
Engine logs go to stderr, which the parent points at the model's log file. The engine's API key
comes in the environment (`LLAMA_API_KEY`, as llama-server reads it), never on the command line,
which every local user can read.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

from ml_offload.backends.pdeathsig import die_with_parent

API_KEY_ENV = "LLAMA_API_KEY"  # llama.cpp's own name (common/arg.cpp, --api-key)


def build_params(cfg: dict[str, Any]) -> Any:
    """Translate our launch config into xllamacpp's CommonParams."""
    import xllamacpp as xlc

    p = xlc.CommonParams()
    p.model.path = cfg["path"]
    p.n_ctx = int(cfg["ctx_size"]) * int(cfg["parallel"])
    p.n_parallel = int(cfg["parallel"])
    p.n_gpu_layers = int(cfg["gpu_layers"])
    if cfg.get("ubatch"):  # a multiple of `parallel` (vram.engine_ubatch)
        p.n_ubatch = int(cfg["ubatch"])
    p.hostnames = ["127.0.0.1"]
    p.port = int(cfg.get("port", 0))
    p.model_alias = {cfg["name"]}
    p.endpoint_metrics = True
    if os.environ.get(API_KEY_ENV):
        p.api_keys = [os.environ[API_KEY_ENV]]
    if cfg.get("tensor_split"):
        split = [float(x) for x in cfg["tensor_split"]]
        p.tensor_split = split + [0.0] * (len(p.tensor_split) - len(split))  # fixed-size array
    if cfg.get("threads"):
        p.cpuparams.n_threads = int(cfg["threads"])
        p.cpuparams_batch.n_threads = int(cfg["threads"])
    if cfg.get("embeddings"):
        p.embedding = True
        p.pooling_type = xlc.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    if cfg.get("chat_template_file"):  # llama-server's --jinja --chat-template-file
        with open(cfg["chat_template_file"], encoding="utf-8") as template:
            p.chat_template = template.read()
        p.use_jinja = True
    if cfg.get("slot_save_path"):  # llama-server's --slot-save-path, which adds the "/"
        p.slot_save_path = os.path.join(cfg["slot_save_path"], "")  # the server appends names
    for key, value in cfg.get("engine_params", {}).items():
        setattr(p, key, value)
    return p


def main(argv: list[str]) -> int:
    die_with_parent()
    cfg = json.loads(argv[1])
    import xllamacpp as xlc

    try:
        server = xlc.Server(build_params(cfg))
    except Exception as exc:  # the engine's own message goes back to the parent
        print(f"FAILED {exc}", flush=True)
        return 1
    print(f"READY {server.listening_address}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    sys.stdin.read()  # returns at EOF: the parent closed our stdin or died
    os._exit(0)  # skip slow interpreter teardown; the OS frees the engine's memory


if __name__ == "__main__":
    sys.exit(main(sys.argv))
