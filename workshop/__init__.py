"""The workshop: everything a run needs beyond the reference (run folders, archive and resume, progress,
summary and picture, workers and Ray, measured costs and budgets, plugins, multi-fidelity, after the
search, the benchmarks and the device check, and the full command line). It imports the reference
modules at the root (liv, genome, evolve, train, corpus, star); they never import it."""
