"""`python -m commands ...` is `worldsim ...` (what `accelerate launch -m commands` runs)."""

from commands.main import main

raise SystemExit(main())
