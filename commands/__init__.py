"""The `worldsim` command: the layer above every stage. It parses arguments, calls the stages'
public functions and prints what they return; nothing below imports it (tests/test_imports.py).
`commands/main.py` holds the parser and most subcommands, `commands/evaluate.py` the `worldsim
eval` family. `python -m commands` runs it without the installed script."""
