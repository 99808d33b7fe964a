"""`python -m rillet.node --node-id N --listen HOST:PORT --data-dir DIR [--config FILE]`."""

from rillet.node.cli import serve

if __name__ == "__main__":
    serve(prog_name="python -m rillet.node")
