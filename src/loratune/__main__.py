import sys

from loratune.cli import main

sys.exit(main())
