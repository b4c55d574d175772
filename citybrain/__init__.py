"""citybrain: edge-and-cloud traffic signal control with emergency green-wave corridors."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("citybrain")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
