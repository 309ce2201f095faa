"""Restores and restore drills: fetch a backup and prove it (``fetch``), check the restored copy
(``validation``), and record the drill (``record``).

The engines create, load and drop the databases (``cloudops.engines.postgres``,
``cloudops.engines.mariadb``); scratch names and the guard are in ``cloudops.engines.scratch``.
"""
