"""The compiled segmenter: optional, so an install without a C compiler still works.

Everything else about the package is in setup.cfg. Without the extension,
``reverserd.graphemes`` reverses text with its ``re`` patterns instead:
the same answers, several times slower on text with many multi-character
clusters.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("reverserd._clusters", ["src/reverserd/_clusters.c"],
                             optional=True)])
