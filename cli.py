"""mnisttext command line. `python cli.py --help`; the same as the `mnisttext` console script.

    python cli.py generate --digits 0-9          # the main job
    python cli.py export --data-root ../shared/data
"""
import sys

from mnisttext.cli import main

if __name__ == "__main__":
    sys.exit(main())
