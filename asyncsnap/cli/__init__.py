"""The ``asyncsnap`` command: one thin layer over the library (option parsing, the outcome
envelope, presentation)."""

# Set by the console script (``app.main``): the process ends with the command it runs.
# ``envelope.run_cancellable`` then ignores SIGINT and SIGTERM once a command's work is
# done, for the little that is left (printing the result, the interpreter's exit), where
# their default action would kill a process whose backup is complete, with no error line.
ends_with_command = False
