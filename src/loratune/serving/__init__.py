"""`loratune serve`: finished runs behind one HTTP endpoint. `adapters` loads the runs (runs that share a base model
share one copy of it), `batcher` scores queued texts in batches off the event loop, `api` holds the JSON shapes,
`app` the routes, `metrics` the Prometheus figures and `server` the process: startup, draining, shutdown."""
