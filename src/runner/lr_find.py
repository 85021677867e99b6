"""`python -m runner.lr_find`: the learning-rate range test (runner.commands.lr_find; importing this module gives that one)."""
import sys

from runner.commands import lr_find

if __name__ == "__main__":
    sys.exit(lr_find.cli())
sys.modules[__name__] = lr_find
