"""redact_uri: credentials of tracking URIs (in a URI or inside a message) are hidden, nothing else changes."""
from __future__ import annotations

import pytest

from components.tracking.uri import redact_uri


@pytest.mark.parametrize(("text", "expected"), [
    ("http://alice:pw@host:5000/", "http://***@host:5000/"),
    ("https://TOKEN123@host/path", "https://***@host/path"),
    ("postgresql://u:p@db/mlflow", "postgresql://***@db/mlflow"),
    ("http://host/?access_token=abc&page=2", "http://host/?access_token=***&page=2"),
    ("backend http://u:p@h/?apiKey=k was unreachable (API request to http://u:p@h/api failed)",
     "backend http://***@h/?apiKey=*** was unreachable (API request to http://***@h/api failed)"),
    ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db"),
    ("file:///runs/mlartifacts", "file:///runs/mlartifacts"),
    ("http://host:5000/?page=2", "http://host:5000/?page=2"),
])
def test_redact_uri_hides_credentials_only(text, expected):
    assert redact_uri(text) == expected
