"""`python -m runner.compare`: a fair comparison, each arm's lr tuned (runner.commands.compare; importing this module gives that one)."""
import sys

from runner.commands import compare

if __name__ == "__main__":
    sys.exit(compare.main())
sys.modules[__name__] = compare
