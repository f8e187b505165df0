"""One benchmark and report for every method (issue #8).

``grid`` parses and validates the grid YAML into cells, ``execute`` runs them resumably (each in
its own process, through :func:`fedlsm.runner.run`), ``aggregate`` collects run folders into mean ±
std and the Pareto front, ``report`` writes Markdown, HTML and PNG plots.
"""
