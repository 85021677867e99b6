"""`python -m runner.ensemble`: averaging run directories' predictions (runner.commands.ensemble; importing this module gives that one)."""
import sys

from runner.commands import ensemble

if __name__ == "__main__":
    sys.exit(ensemble.main())
sys.modules[__name__] = ensemble
