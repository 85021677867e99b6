"""`python -m runner.grid`: the option grid at runner's defaults (runner.commands.grid; importing this module gives that one)."""
import sys

from runner.commands import grid

if __name__ == "__main__":
    sys.exit(grid.main())
sys.modules[__name__] = grid
