"""Monitoring as code: Prometheus rules and their tests, the lag exporter of the embedded stack,
file-based scrape targets, and the Grafana dashboards (``f2p monitoring render``)."""
