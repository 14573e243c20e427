import sys

from random_ltd.cli import main

sys.exit(main())
