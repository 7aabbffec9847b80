"""Imported by the data-loader fork server only (workers.PRELOAD names it last): the server leaves quickly."""

from distrib.runtime import quick_exit

quick_exit.at_exit()
