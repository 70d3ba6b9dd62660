"""The ``asyncsnap`` command: one thin layer over the library (option parsing, the outcome
envelope, presentation)."""
