"""Serve Keystone's public WSGI application on a loopback port (run with the Keystone venv).

usage: python serve_keystone.py CONFIG_FILE PORT
"""
import os
import sys

from werkzeug.serving import make_server

config, port = sys.argv[1], int(sys.argv[2])
sys.argv = sys.argv[:1]  # keystone parses the command line as its own
os.environ["OS_KEYSTONE_CONFIG_FILES"] = config

from keystone.wsgi.api import application  # noqa: E402

server = make_server("127.0.0.1", port, application, threaded=True)
print(f"keystone serving on 127.0.0.1:{port}", flush=True)
server.serve_forever()
