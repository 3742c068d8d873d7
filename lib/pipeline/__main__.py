import sys

from lib.cli.pipeline import main

sys.exit(main())
