"""``python -m lib.pipeline``: a shim for :mod:`lib.cli.pipeline`."""
from lib.cli.errors import exit_quietly
from lib.cli.pipeline import main

exit_quietly(main())
