"""CarRacing-v3 with its road drawn the same way, with the polygon maths in numpy.

Gymnasium's ``CarRacing._render_road`` rotates, scales and bounds-checks each of
its ~700 grass and road polygons point by point in Python on every step; that is
most of a step's time. ``CarRacing`` below does the same arithmetic for all
polygons at once and hands pygame the same float coordinates, in the same order,
for the same polygons, so the frames are the game's own (``tests/test_games.py``
compares them pixel for pixel). Physics, rewards and seeding are untouched.
Imported only once Box2D is known to be installed.
"""

from __future__ import annotations

import math

import numpy as np
from gymnasium.envs.box2d import car_racing as _cr
from pygame import gfxdraw


def _grass_polygons() -> np.ndarray:
    """The grass patches of ``_render_road``, in its order: (400, 4, 2)."""
    d = _cr.GRASS_DIM
    return np.array(
        [
            [(d * x + d, d * y), (d * x, d * y), (d * x, d * y + d), (d * x + d, d * y + d)]
            for x in range(-20, 20, 2)
            for y in range(-20, 20, 2)
        ],
        dtype=np.float64,
    )


def _rotation(angle: float) -> tuple[float, float]:
    """(cos, sin) as ``pygame.math.Vector2.rotate_rad`` uses them: the angle wrapped to
    [0, 2 pi) first, and quarter turns (within 1e-6) exact."""
    eps = 1e-6
    angle = math.fmod(angle, 2 * math.pi)
    if angle < 0:
        angle += 2 * math.pi
    if math.fmod(angle + eps, math.pi / 2) < 2 * eps:
        quarter = int((angle + eps) / (math.pi / 2)) % 4
        return [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)][quarter]
    return math.cos(angle), math.sin(angle)


class CarRacing(_cr.CarRacing):
    """``gymnasium.envs.box2d.CarRacing`` with a vectorised ``_render_road``."""

    _GRASS = _grass_polygons()
    _road_xy = None  # the track's polygons (N, 4, 2), gathered at the first draw after reset

    def reset(self, *, seed=None, options=None):
        self._road_xy = None
        return super().reset(seed=seed, options=options)

    def _transform(self, polys: np.ndarray, zoom, translation, angle) -> np.ndarray:
        """(N, K, 2) world points -> pixel points, as ``_draw_colored_polygon`` computes them."""
        c, s = _rotation(angle)
        x, y = polys[..., 0], polys[..., 1]
        return np.stack(
            [(x * c - y * s) * zoom + translation[0], (x * s + y * c) * zoom + translation[1]],
            axis=-1,
        )

    def _draw_visible(self, pixels: np.ndarray, colors) -> None:
        m = _cr.MAX_SHAPE_DIM
        inside = (
            (pixels[..., 0] >= -m)
            & (pixels[..., 0] <= _cr.WINDOW_W + m)
            & (pixels[..., 1] >= -m)
            & (pixels[..., 1] <= _cr.WINDOW_H + m)
        ).any(axis=1)
        for i in np.flatnonzero(inside):
            poly = [tuple(p) for p in pixels[i].tolist()]
            color = colors(i)
            gfxdraw.aapolygon(self.surf, poly, color)
            gfxdraw.filled_polygon(self.surf, poly, color)

    def _render_road(self, zoom, translation, angle):
        b = _cr.PLAYFIELD
        field = [(b, b), (b, -b), (-b, -b), (-b, b)]
        self._draw_colored_polygon(
            self.surf, field, self.bg_color, zoom, translation, angle, clip=False
        )
        self._draw_visible(
            self._transform(self._GRASS, zoom, translation, angle), lambda i: self.grass_color
        )
        if self._road_xy is None:
            self._road_xy = np.array([[p[:2] for p in poly] for poly, _ in self.road_poly])
        if len(self._road_xy):
            road = self.road_poly  # tile colours change in place when the car drives over them
            self._draw_visible(
                self._transform(self._road_xy, zoom, translation, angle),
                lambda i: [int(c) for c in road[i][1]],
            )
