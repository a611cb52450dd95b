"""A config's identity: its hash (equal hash <=> the same measurement) and the form stored with its results (no
environment values copied in). The launcher, resume and the results all use these; nothing here imports the job."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

# keys that say where results go or how errors are reported, not what is measured: left out of the config hash
NON_RESULT_KEYS = ("out_root", "results_dir", "resume", "on_error", "progress", "debug", "tag", "report")


def canonical_json(data: Any) -> str:
    """`data` as JSON with sorted keys, every key a string: the form config hashes are taken of (device.max_memory mixes
    GPU indices and `cpu`, which json cannot sort together)."""
    def keyed(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {str(k): keyed(v) for k, v in obj.items()}
        return [keyed(v) for v in obj] if isinstance(obj, (list, tuple)) else obj

    return json.dumps(keyed(data), sort_keys=True, default=str)


def config_hash(cfg: DictConfig) -> str:
    """Hash of the resolved job config minus hydra and output/reporting keys: equal hash <=> same measurement."""
    data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for key in ("hydra", *NON_RESULT_KEYS):
        data.pop(key, None)
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:16]


# keys whose environment interpolations are resolved in stored configs: where results go (${oc.env:RUNNER_OUT,outputs})
PATH_KEYS = ("out_root", "results_dir")
_KEEP_ENV = "runner_keep_env"


def stored_config(cfg: DictConfig) -> DictConfig:
    """`cfg` as stored in the results (config_yaml, tag): every `${oc.env:...}` outside PATH_KEYS stays as written
    when the rest is resolved, so a shared config cannot copy the environment (tokens, home paths) into results."""
    if not OmegaConf.has_resolver(_KEEP_ENV):
        OmegaConf.register_new_resolver(_KEEP_ENV, lambda *args: "${oc.env:" + ",".join(map(str, args)) + "}")

    def keep(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: keep(v) for k, v in node.items()}
        if isinstance(node, list):
            return [keep(v) for v in node]
        return node.replace("${oc.env:", "${" + _KEEP_ENV + ":") if isinstance(node, str) else node

    data = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    return OmegaConf.create({k: v if k in PATH_KEYS else keep(v) for k, v in data.items()})
