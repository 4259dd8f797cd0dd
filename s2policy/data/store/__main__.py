"""``python -m s2policy.data.store action=inspect|repair store=<path> [confirm=true]``."""

from s2policy.data.store.repair import main

main()
