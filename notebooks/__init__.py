"""Cloudhop's example notebooks, shipped as package data (``cloudhop.notebooks``): the
server extension copies them into each new workspace (``cloudhop.extensions.examples``)."""
