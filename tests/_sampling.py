"""The tests' shorthand for sampling calls: the options' fields as keywords, and a sampler name of
the tests' lists ("naive", the method, or a kernel backend) as one value."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from torch import Tensor

from pegasus.sampling import SamplingOptions, iter_sample_indices, sample_indices

_FIELDS = {f.name for f in dataclasses.fields(SamplingOptions)}


def options(sampler: str | None = None, **fields: object) -> SamplingOptions:
    """SamplingOptions for `sampler`: "naive" is the method, any other name the cached method's backend."""
    if sampler == "naive":
        return SamplingOptions(method="naive", **fields)
    return SamplingOptions(**fields) if sampler is None else SamplingOptions(backend=sampler, **fields)


def _split(kwargs: dict) -> tuple[SamplingOptions, dict]:
    sampler = kwargs.pop("sampler", None)
    fields = {k: kwargs.pop(k) for k in list(kwargs) if k in _FIELDS}
    return options(sampler, **fields), kwargs


def draw(prior, *args, **kwargs) -> Tensor:
    """`pegasus.sample_indices(prior, n, alpha, options, noise=, top=, stream=)` from keywords."""
    opts, rest = _split(kwargs)
    return sample_indices(prior, *args, options=opts, **rest)


def iter_draw(prior, *args, **kwargs) -> Iterator[Tensor]:
    """`pegasus.sampling.iter_sample_indices` from keywords, as `draw`."""
    opts, rest = _split(kwargs)
    return iter_sample_indices(prior, *args, options=opts, **rest)
