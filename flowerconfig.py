"""Flower's settings for votes_app; command-line options and FLOWER_* variables override them.

Basic auth comes from the environment (FLOWER_BASIC_AUTH=user:password), never from here.
"""

address = "127.0.0.1"
port = 5555
# Keep what Flower learnt across restarts (a shelve file next to where it runs).
persistent = True
db = "flower.db"
state_save_interval = 60_000  # ms
max_tasks = 10_000
