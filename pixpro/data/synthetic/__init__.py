"""Procedural street scenes written as a raw Cityscapes tree, deterministic from a seed.

Each scene is a small 3-D world seen by a pinhole camera at height `hc` above a flat ground:
a street (road with lane markings, kerbs, sidewalks, optional grass strips) between two sides
that are building facades, a hedge (park) or open terrain, closed by a far wall of buildings or
trees. Surfaces are resolved with a depth buffer; cars are ray-traced boxes, people, poles, signs,
traffic lights and trees are upright billboards, so nearer things are bigger and occlude farther
ones. Colours of different classes deliberately overlap (grey road / sidewalk / buildings / cars /
overcast sky, green terrain / vegetation, sky-blue buildings and window reflections); the classes
differ by texture, shape and context, which is what a dense self-supervised method must pick up.

Image coordinates: pixel (row y, column x); world: X lateral (right +), Y height above ground,
Z depth along the street. A ground point (X, 0, Z) projects to x = vx + f X / Z, y = vy + f hc / Z.

Modules, each depending only on the ones before it: `palette` (colours, noise fields, texture
helpers), `scene` (camera, canvases, photographic finish), `background` (sky, street, facades),
`objects` (cars, people, poles, signs, trees, ego vehicle) and `writer` (one scene from its
seed, the tree on disk).
"""

from pixpro.data.synthetic.writer import (CITY_NAMES, EXTRA_SPLIT, SPLITS, TREE_RECORD, SceneJob, generate_tree,
                                          render_scene, scene_jobs, tree_record, write_scene)

__all__ = ["CITY_NAMES", "EXTRA_SPLIT", "SPLITS", "TREE_RECORD", "SceneJob", "generate_tree", "render_scene",
           "scene_jobs", "tree_record", "write_scene"]
