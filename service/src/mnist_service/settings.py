"""Service configuration, read once from the environment (documented in README.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    model_dir: Path = Path("models")
    model_name: str = "mnist"
    model_version: int | None = None  # pin one version; None serves the highest valid one
    model_poll_seconds: float = 10.0  # 0 turns polling off
    max_batch: int = 1024
    max_body_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096  # a 12-megapixel phone photo fits; bombs do not
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ=os.environ) -> Settings:
        """Settings from environment variables; a bad value raises ValueError naming the variable."""
        return cls(
            model_dir=Path(environ.get("MODEL_DIR", cls.model_dir)),
            model_name=environ.get("MODEL_NAME", cls.model_name),
            model_version=_parse(environ, "MODEL_VERSION", int, None, minimum=1),
            model_poll_seconds=_parse(environ, "MODEL_POLL_SECONDS", float, cls.model_poll_seconds, minimum=0),
            max_batch=_parse(environ, "MAX_BATCH", int, cls.max_batch, minimum=1),
            max_body_bytes=_parse(environ, "MAX_BODY_BYTES", int, cls.max_body_bytes, minimum=1),
            max_image_pixels=_parse(environ, "MAX_IMAGE_PIXELS", int, cls.max_image_pixels, minimum=1),
            log_level=environ.get("LOG_LEVEL", cls.log_level).upper(),
        )


def _parse(environ, name: str, type_, default, *, minimum):
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = type_(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a valid {type_.__name__}") from None
    if value < minimum:
        raise ValueError(f"{name}={text!r} must be >= {minimum}")
    return value
