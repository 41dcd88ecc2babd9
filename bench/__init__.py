"""DigitDraw's benchmarks and the handwriting they write on the page (docs/benchmarks.md)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
