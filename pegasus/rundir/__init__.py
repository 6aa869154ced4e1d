"""The run directory, the layer below the stages: what a run's files are called and hold and how
each is read and written (`layout`), and a finished run as one object (`run`: Run, load_run).

The stages of the method (train_vqvae, select, interpolate, train_prior, train_classifier, sample,
evaluate) read what earlier stages wrote through this package alone: they import it and the
models, never each other.
"""
from pegasus.rundir.layout import *  # noqa: F403 (the layout's __all__)
from pegasus.rundir.layout import __all__ as _layout
from pegasus.rundir.run import Run, load_run

__all__ = [*_layout, "Run", "load_run"]
