"""tinyexp_dagster: TinyExp experiments as Dagster assets, trained with DDP on Ray.

Importing this package is cheap: torch and ray are imported only inside asset bodies
and resource methods, so `dagster` loads the definitions fast.
"""

__version__ = "0.1.0"
