"""`python -m votes_tools.faults OPTIONS_JSON`: the campaign, on the environment's namespace."""

import sys

from votes_tools.faults.command import main
from votes_tools.processes import exit_on_sigterm

# SystemExit unwinds through the `finally` blocks that bring services back.
exit_on_sigterm()
sys.exit(main(sys.argv[1]))
