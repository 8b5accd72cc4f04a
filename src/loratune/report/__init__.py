"""Reports: plots, report.md and report.html for a run, and the comparison page for several, from files on disk."""
