import sys

from pegasus.cli import main

sys.exit(main())
