import sys

from dqlr.cli import main

sys.exit(main())
