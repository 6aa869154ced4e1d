"""`pegasus demo`: a local web page to sample pegasi with sliders, served by the standard library.

>>> server = pegasus.demo.make_server(port=0)   # the shipped run on a free port of 127.0.0.1
>>> print(server.url); server.serve_forever()

The page is one HTML file with its script and style inline (index.html, package data) and loads
nothing from anywhere else; server.py has the API and how requests are bounded.
"""
from pegasus.demo.server import MAX_SAMPLES, DemoServer, make_server

__all__ = ["MAX_SAMPLES", "DemoServer", "make_server"]
