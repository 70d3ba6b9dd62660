from .cli.app import main

# Guarded: a worker process started by spawn (dump --cluster local:N) imports the parent's
# __main__ again, and must not run the command a second time.
if __name__ == "__main__":
    main()
