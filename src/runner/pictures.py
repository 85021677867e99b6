"""`python -m runner.pictures`: the optimizer race on 2-D surfaces (runner.commands.pictures; importing this module gives that one)."""
import sys

from runner.commands import pictures

if __name__ == "__main__":
    sys.exit(pictures.main())
sys.modules[__name__] = pictures
