"""An ImageFolder's images as a dataset source: paths from the sample index (torch-free)."""

from __future__ import annotations

from distrib.data import index


class FolderSource:
    """A SplitIndex as an ImageDataset source: the file's path is both its name and what is opened."""

    def __init__(self, split: index.SplitIndex):
        self.split, self.labels = split, split.labels

    def __reduce__(self):  # the SplitIndex re-maps its files in the worker: no copy of the labels
        return FolderSource, (self.split,)

    def name(self, i: int) -> str:
        return self.split.path(i)

    open = name
