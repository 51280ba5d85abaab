"""After the demo: list the plots of the last benchmark run, when there are any."""

from pathlib import Path

plots = sorted(Path("bench-results").glob("**/*.png"))
if plots:
    print("\nplots from the last benchmark run:")
    for p in plots:
        print(f"  {p}")
