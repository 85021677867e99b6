"""`python -m runner.results`: the published numbers, regenerated (runner.commands.results; importing this module gives that one)."""
import sys

from runner.commands import results

if __name__ == "__main__":
    sys.exit(results.main())
sys.modules[__name__] = results
