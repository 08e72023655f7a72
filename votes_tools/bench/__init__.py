"""`votes bench`: throughput, latency and resource figures of the real pipeline, against targets.

`votes bench` runs `python -m votes_tools.bench OPTIONS_JSON` on the namespace "bench" (see
`votes_tools.namespace`), which it wipes. The phases, in this order:

1. ceiling (`ceiling`): kombu alone, on a scratch queue, with the same number of same-sized
   messages and the same producer processes: publish alone, consume/ack alone, both at once;
2. one vote per message (`pipeline`, `throughput`): the real workers and beat (`celery -A
   votes_app ...`), N votes published as fast as the producers go, first publish -> last
   vote tallied; then an open-loop latency run at --rate votes/s, publish -> audited ->
   tallied per vote;
3. bulk intake, the same workers: N votes through `VotePublisher` grouping them into
   `validate_votes` messages (--max-batch, --linger-ms), then latency runs at --rate and
   --bulk-rate;
4. worker memory and CPU per vote by component (`accounting`), Redis memory per voter,
   reconciliation (a lost or doubled vote fails the run);
5. bulk operations (`bulk`): `validate` alone, `votes voters load` of a large roll, and one
   flush of a large backlog of pending votes.

`report` compares each figure with its target in a table; bench/results/bench-<time>.json
keeps them all with the machine they came from (`machine`), and `picture` draws votes/s and
latency percentiles over the run beside it (bench-<time>.png). `run` puts the phases
together; the exit code is 1 when a vote was lost or doubled. `--quick` runs the same phases
at small sizes.
"""
