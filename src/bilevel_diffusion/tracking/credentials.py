"""Whether W&B credentials are present (the environment or ``~/.netrc``), checked before a run starts so that
``logger.mode=online`` without a key fails in a second with one line instead of a traceback or a prompt."""

from __future__ import annotations

import netrc
import os
from urllib.parse import urlparse


def wandb_credentials_found() -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False
