"""`python -m votes_tools.bench OPTIONS_JSON`: the measuring process, on the bench's namespace."""

import sys

from votes_tools.bench.options import BenchOptions
from votes_tools.bench.run import run_bench
from votes_tools.processes import exit_on_sigterm

exit_on_sigterm()
sys.exit(run_bench(BenchOptions.from_json(sys.argv[1])))
