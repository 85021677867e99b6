"""`python -m runner.transfer_grid`: the lecture's 2x2 transfer grid (runner.commands.transfer_grid; importing this module gives that one)."""
import sys

from runner.commands import transfer_grid

if __name__ == "__main__":
    sys.exit(transfer_grid.main())
sys.modules[__name__] = transfer_grid
