"""The `mnisttext` command, run from a clone without installing: `python cli.py --help`.

    python cli.py generate --digits 0-9          # the main job, pictures in outputs/
    python cli.py decode corpus/test.txt --limit 16 --grid
"""
import sys

from mnisttext.cli import main

if __name__ == "__main__":
    sys.exit(main())
