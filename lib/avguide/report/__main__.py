"""`python -m avguide.report readme [--block ablation] [--eval-dir DIR]`: see avguide.report.readme.main."""

import sys

from avguide.report.readme import main

if __name__ == "__main__":
    sys.exit(main())
