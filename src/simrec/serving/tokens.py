"""The API token: read from a file or an environment variable, checked, never logged."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)


class TokenError(ValueError):
    """No usable API token was configured."""


def load_token(token_file: Path | None, env_var: str, min_chars: int) -> str:
    """The bearer token from `token_file` (stripped) or else the `env_var` variable."""
    if token_file is not None:
        path = Path(token_file)
        try:
            token = path.read_text().strip()
        except OSError as error:
            raise TokenError(f"cannot read the token file {path}: {error.strerror}") from error
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("token file %s is readable by other users; chmod 600 it", path)
        source = f"token file {path}"
    else:
        token = os.environ.get(env_var, "").strip()
        source = f"environment variable {env_var}"
    if not token:
        raise TokenError(f"no API token: pass --token-file or set {env_var}")
    if len(token) < min_chars:
        raise TokenError(f"the API token from the {source} is shorter than {min_chars} characters")
    return token
