"""errors.safe_url: no URL the gateway prints shows its credentials."""

from __future__ import annotations

import pytest

from ml_offload.backends.http import translate
from ml_offload.errors import safe_url


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("postgresql+asyncpg://mlo:s3cret@db/mlo", "postgresql+asyncpg://***@db/mlo"),
        ("rediss://user:p@ss@h:6380", "rediss://***@h:6380"),  # an unescaped @ in it
        (
            "cannot reach https://k:s3cret@api.example.com/v1 (or 'redis://:s3cret@r')",
            "cannot reach https://***@api.example.com/v1 (or 'redis://***@r')",
        ),
        ("http://127.0.0.1:8080/v1/chat?x=a@b", "http://127.0.0.1:8080/v1/chat?x=a@b"),
        ("memory://", "memory://"),
        ("write to a@b.example", "write to a@b.example"),
    ],
)
def test_userinfo_is_masked_and_nothing_else(text: str, shown: str) -> None:
    assert safe_url(text) == shown


@pytest.mark.parametrize(
    "exc", [ConnectionRefusedError("refused"), TimeoutError(), OSError("reset by peer")]
)
def test_upstream_errors_show_no_credentials(exc: BaseException) -> None:
    """An upstream address with a password in it (`https://user:pass@host`) is shown masked
    in the error the caller gets (and the log)."""
    err = translate(exc, "https://user:s3cret@llm.example.com/v1/chat/completions")
    assert "s3cret" not in err.message and "https://***@llm.example.com/v1" in err.message
