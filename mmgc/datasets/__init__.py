"""Datasets that mmgc can make by itself (no download needed)."""

from .shapes import SHAPES_CLASSES, SHAPES_METAINFO, make_shapes_dataset

__all__ = ['SHAPES_CLASSES', 'SHAPES_METAINFO', 'make_shapes_dataset']
