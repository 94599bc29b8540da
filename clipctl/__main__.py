"""`python -m clipctl` runs the same CLI as the `clipctl` console script."""

import sys

from clipctl.cli import main

if __name__ == "__main__":
    sys.exit(main())
