"""``python -m lib.pipeline``: the runner's entry point (a shim; the runner is :mod:`lib.run.pipeline`,
the command line :mod:`lib.cli.pipeline`)."""
