"""The compiled parts: optional, so an install without a C compiler still works.

Everything else about the package is in setup.cfg. Without ``_clusters``,
``reverserd.graphemes`` reverses text with its ``re`` patterns instead:
the same answers, several times slower on text with many multi-character
clusters. Without ``_lines``, ``reverserd.reversal`` answers a read of ASCII
lines, or of text whose characters each stand alone, with a few whole-read
passes in Python instead: the same answers, two to ten times slower.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(f"reverserd.{name}", [f"src/reverserd/{name}.c"], optional=True)
                   for name in ("_clusters", "_lines")])
