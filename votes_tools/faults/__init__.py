"""`votes faults`: the fault campaign against the real services, one table row per scenario.

Kills, restarts and outages while votes stream in; the exit status is non-zero if any vote
is lost, counted twice, wrongly refused or left in votes.dead. Each scenario runs on the
campaign's namespace (see `votes_tools.namespace`), emptied before it: two workers and beat
run while a stream of votes is published, a fault is injected part-way through, whatever
was killed is started again, and the campaign waits for the pipeline to drain before it
counts. The scenarios are plain functions, so the test suite runs each of them on a short
stream (tests/integration/test_faults.py); docs/FAULTS.md describes them.

`options` says how a scenario runs, `injectors` hold the faults, `run` drives one scenario's
processes and counts what became of its votes, `scenarios` are the faults in order,
`report` the table, `campaign` the loop over scenarios, `command` the click commands.
"""
