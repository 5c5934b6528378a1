"""Turn a config (dataclass or mapping) into MLflow params: flattened dotted keys, secrets redacted,
values stringified and cut to MLflow's length limit."""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from components.config import flatten, to_dict

REDACTED = "***"
_SECRET_WORDS = {"token", "password", "passwd", "secret", "key", "apikey", "credential", "credentials"}


def is_secret_key(key: str) -> bool:
    """True when any word of a dotted/underscored key names a secret (token, password, secret, key...)."""
    words = re.split(r"[._\-\s]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", key).lower())
    return any(w in _SECRET_WORDS for w in words)


def _as_text(value: Any) -> str:
    text = str(value)
    if len(text) > MAX_PARAM_VAL_LENGTH:
        text = text[: MAX_PARAM_VAL_LENGTH - 12] + "...[cut]"
    return text


def config_params(cfg: Any) -> dict[str, str]:
    """Flattened, redacted, stringified params of a dataclass config or nested mapping."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return {k: (REDACTED if is_secret_key(k) else _as_text(v)) for k, v in flatten(data).items()}
