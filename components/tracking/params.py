"""Turn a config (dataclass or mapping) into MLflow params: flattened dotted keys, secrets redacted,
values stringified and cut to MLflow's length limit; names made valid for MLflow."""
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


def mlflow_name(name: str) -> str:
    """A metric/param name MLflow accepts: '@' becomes '_at_' (R@50 -> R_at_50), other characters
    outside letters, digits, '_ - . / : space' become '_'."""
    return re.sub(r"[^\w.\-/: ]", "_", str(name).replace("@", "_at_"))


def _as_text(value: Any) -> str:
    text = str(value)
    if len(text) > MAX_PARAM_VAL_LENGTH:
        text = text[: MAX_PARAM_VAL_LENGTH - 12] + "...[cut]"
    return text


def config_params(cfg: Any) -> dict[str, str]:
    """Flattened, redacted, stringified params of a dataclass config or nested mapping."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return {mlflow_name(k): (REDACTED if is_secret_key(k) else _as_text(v)) for k, v in flatten(data).items()}
