"""`python -m mnisttext ...` is the `mnisttext` command."""
import sys

from .cli import main

sys.exit(main())
