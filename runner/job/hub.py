"""Is the Hugging Face hub reachable? Asked at most once per process, so that a machine without network fails fast.

Without HF_HUB_OFFLINE, huggingface_hub retries every request five times with backoff (~25 s per file, each retry
logged twice) before it gives up. The runner looks in the local cache first; only on a miss does it ask
`reachable()`: one HEAD request to the hub endpoint with a short timeout, remembered for the process. When it gets no
answer the process switches to offline mode, exactly as if HF_HUB_OFFLINE=1 had been set before start: cached files
still load, and nothing waits on the network again (the next job of a sweep included).
"""
from __future__ import annotations

import logging
import os
import sys
from functools import lru_cache

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
_probe_failed = False  # offline because the probe got no answer (not because the user asked for it)


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, or the probe switched offline mode on."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


@lru_cache(maxsize=1)
def reachable() -> bool:
    """True when the hub endpoint answers an HTTP request (any status); False offline or on any transport error."""
    global _probe_failed
    if offline():
        return False
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint(), timeout=PROBE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - the HTTP client (requests, httpx, ...) depends on the hub version
        log.debug("hub %s unreachable: %s", endpoint(), exc)
        _probe_failed = True
        go_offline()
        return False
    return True


def why_offline(variable: str = "HF_HUB_OFFLINE") -> str:
    """For error messages: 'the hub (URL) is unreachable' or 'offline mode (HF_HUB_OFFLINE) is on'."""
    return f"the hub ({endpoint()}) is unreachable" if _probe_failed else f"offline mode ({variable}) is on"


def go_offline() -> None:
    """Offline mode for this process: the env var for libraries not imported yet, their constants for those that are."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = datasets_config.HF_DATASETS_OFFLINE = True
