"""Many runs at once: a plan of runs, executed on Dask distributed, indexed."""
