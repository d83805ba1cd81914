import sys

from export.build import main

sys.exit(main())
