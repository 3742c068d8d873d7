"""``python -m lib.train 05 params/toy.yaml`` (also under ``accelerate launch``): a shim for
:mod:`lib.cli.train`."""
import sys

from lib.cli.train import main

sys.exit(main())
