"""Real text sources that install offline from package registries, one module per source.

Each module turns one raw source (read straight out of a downloaded wheel, sdist or npm
tarball, or from the local Python installation) into training examples or evaluation
items, split deterministically into train / dev / test by :func:`data.sources.split.split_of`.
"""
