"""`python -m runner.report`: a sweep's ranked table and plots (runner.commands.report; importing this module gives that one)."""
import sys

from runner.commands import report

if __name__ == "__main__":
    sys.exit(report.main())
sys.modules[__name__] = report
