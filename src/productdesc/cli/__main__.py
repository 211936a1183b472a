import sys

from productdesc.cli import main

sys.exit(main())
