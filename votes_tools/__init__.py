"""votes_tools: the demo, the benchmark and the fault campaign of votes_app, and their harness.

They run the real pipeline (`celery -A votes_app` workers and beat, the `votes` command) on
namespaces of their own, which they wipe. They import votes_app; votes_app never imports them
(an import-linter contract says so), and the production image does not carry them.
"""
