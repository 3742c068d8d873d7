"""Entry points, outside the library: nothing in lib imports this package.

    python -m lib.pipeline run|check|plan|grid|contamination ...   (lib/pipeline/__main__.py -> cli.pipeline)
    python -m lib.train 05 params/toy.yaml                           (lib/train/__main__.py -> cli.train)
    python -m lib.cli.judge | colab | report | rehearsal | wordpairs | grid
"""
