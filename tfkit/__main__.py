import sys

from tfkit.cli import main

sys.exit(main())
