"""Options that the CLI and the service both take as text (flags, environment, query strings, forms)."""

from __future__ import annotations

TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_bool(name: str, value, *, text: bool = True) -> bool:
    """A boolean; from text (flags, environment, query strings, forms) also one of TRUE / FALSE in any
    case. JSON says true or false itself (text=False). Anything else is a ValueError naming `name`."""
    if isinstance(value, bool):
        return value
    if text and isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise ValueError(f"{name} must be true or false, got {value!r:.40}")


def parse_choice(name: str, value, choices: tuple[str, ...]) -> str:
    """One of `choices`, exactly; anything else is a ValueError naming `name`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r:.40}")
    return value


def parse_int(name: str, value, minimum: int, maximum: int, *, text: bool = True) -> int:
    """An integer in [minimum, maximum]; from text also its decimal digits. JSON says a number itself
    (text=False; true and false are not numbers). Anything else is a ValueError naming `name`."""
    if text and isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if type(value) is not int or not minimum <= value <= maximum:
        raise ValueError(f"{name} must be an integer from {minimum} to {maximum}, got {value!r:.40}")
    return value
