"""Source builders of the repository, for tests, benches and scripts run from a clone; not installed.

The code lives in the library (:mod:`spr_plugin.demo`, shipped because ``spr demo`` needs it); these modules
keep the clone's historical names (``data_builders.synthetic`` ...) working for scripts and notes that use them.
The wheel ships ``spr_plugin`` only: a generic top-level name like this one does not belong in site-packages.
"""
