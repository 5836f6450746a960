import os
import sys

# benchutil.py lives beside the benchmarks.
sys.path.insert(0, os.path.dirname(__file__))
