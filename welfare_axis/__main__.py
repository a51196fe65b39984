import sys

from welfare_axis.cli import main

sys.exit(main())
