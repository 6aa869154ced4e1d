"""The demo page's settings as they arrive (JSON strings or numbers), checked at the boundary.

Every bad value raises BadRequest with one line that names the field, what was expected and what
was received; the server answers it with HTTP 400 and the page shows the line.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_SAMPLES = 256
"""The most samples one request may ask for: 32 rows of the grid. At 24x24 that is ~0.8 s of the
C++ sampler on 2 cores; the noise of a batch stays bounded by the batch size (see server.py)."""

_MAX_SEED = 2**63 - 1  # as the CLI's --seed: torch.Generator.manual_seed takes a signed 64-bit integer

FIELDS = ("run", "n", "alpha", "temperature", "top_k", "seed", "backend")
"""What the page sends; the strip ignores n and alpha."""


class BadRequest(ValueError):
    """A value from the page that cannot be used (HTTP 400; the message is shown on the page)."""


@dataclass(frozen=True)
class Settings:
    """One request of the page. run: a run directory ("" = the server's own); temperature None =
    the run's (its sampling.json); top_k None = all codes."""

    run: str
    n: int
    alpha: float
    temperature: float | None
    top_k: int | None
    seed: int
    backend: str


def _number(
    body: dict[str, Any], name: str, kind: type[int] | type[float], expected: str, ok: Callable[[Any], bool],
    default: int | float | None = None,
) -> Any:
    """body[name] read as `kind` (JSON numbers and strings alike), `default` when absent or empty;
    BadRequest "{name} should be {expected}, got ..." when it does not read or `ok` refuses it."""
    value = body.get(name)
    if value is None or value == "":
        if default is None:
            return None
        value = default
    text = str(value).strip()  # a JSON true reads "True", which neither int() nor float() takes
    try:
        number = kind(text)
    except ValueError:
        raise BadRequest(f"{name} should be {expected}, got {text[:40]!r}") from None
    if not ok(number):
        raise BadRequest(f"{name} should be {expected}, got {text[:40]}")
    return number


def _int(body: dict[str, Any], name: str, low: int, high: int, default: int | None = None) -> int | None:
    return _number(body, name, int, f"an integer in {low}..{high}", lambda x: low <= x <= high, default)


def parse_settings(body: Any, backends: list[str], default_backend: str) -> Settings:
    """Settings from the JSON object the page posts; BadRequest for unknown fields and bad values.
    top_k is checked against the run's codes once the run is loaded (`check_top_k`)."""
    if not isinstance(body, dict):
        raise BadRequest(f"the request should be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}")
    run = body.get("run") or ""
    if not isinstance(run, str):
        raise BadRequest(f"run should be a run directory (a path), got {run!r}")
    backend = body.get("backend") or default_backend
    if backend not in backends:
        raise BadRequest(f"backend should be one of {', '.join(backends)} (those that run here), got {str(backend)[:40]!r}")
    return Settings(
        run=run.strip(),
        n=_int(body, "n", 1, MAX_SAMPLES, default=16),
        alpha=_number(body, "alpha", float, "a number in 0..1 (0 = bird, 1 = horse)", lambda a: 0 <= a <= 1, 0.5),
        temperature=_number(body, "temperature", float, "a finite number > 0", lambda t: math.isfinite(t) and t > 0),
        top_k=_int(body, "top_k", 1, 2**31 - 1),
        seed=_int(body, "seed", 0, _MAX_SEED, default=0),
        backend=backend,
    )


def check_top_k(settings: Settings, codes: int) -> None:
    """BadRequest when top_k asks for more codes than the run's VQ-VAE has."""
    if settings.top_k is not None and settings.top_k > codes:
        raise BadRequest(f"top_k should be in 1..{codes} (the run's codes; empty = all), got {settings.top_k}")
