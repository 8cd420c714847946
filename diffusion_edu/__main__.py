"""``python -m diffusion_edu {train, sample, bench}``: see :mod:`diffusion_edu.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
