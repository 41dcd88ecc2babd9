"""python -m training.feedback: the review CLI (training/feedback/cli.py)."""
import sys

from training.feedback.cli import main

sys.exit(main())
