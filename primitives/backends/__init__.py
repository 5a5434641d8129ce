"""Primitive backends (profiles): neural, shapes, scene-graph."""
