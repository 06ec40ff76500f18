"""``cfd3d serve``: a local web app (Gradio) that runs text-to-3D requests and shows them.

:mod:`cfd3d.serve.jobs` drives the runs (no Gradio needed: it is what the tests drive),
:mod:`cfd3d.serve.app` builds the page, :mod:`cfd3d.serve.command` the command line.
"""
