"""Shared test helpers: the development LMK."""

from __future__ import annotations

from hsm.keys import DEVELOPMENT_LMK, Lmk

LMK = Lmk(DEVELOPMENT_LMK)
