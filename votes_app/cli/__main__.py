"""`python -m votes_app.cli`: the `votes` command without its console script."""

from votes_app.cli import main

main()
