"""``python -m lib.train 05 params/toy.yaml`` (also under ``accelerate launch``): a shim for
:mod:`lib.cli.train`."""
from lib.cli.errors import exit_quietly
from lib.cli.train import main

exit_quietly(main())
