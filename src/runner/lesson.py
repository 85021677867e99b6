"""`python -m runner.lesson`: the lectures' claims, one command each (runner.commands.lesson; importing this module gives that one)."""
import sys

from runner.commands import lesson

if __name__ == "__main__":
    sys.exit(lesson.main())
sys.modules[__name__] = lesson
