"""Failover drills: prove a database cluster fails over and back within its targets, measured by a
client writing through the application's own connection string.

- :mod:`.policy` targets and guards (plain frozen records the catalog maps onto);
- :mod:`.guards` the pure preflight guards, each returning its decision and reason;
- :mod:`.probe` the write probe (one thread, numbered rows every ~15 ms, every attempt recorded);
- :mod:`.analysis` the pure judgement of the probe's record and the verdict per target;
- :mod:`.managers` the cluster managers behind one protocol and their registry by catalog name:
  native PostgreSQL there, :mod:`.patroni`, :mod:`.mariadb_gtid` and :mod:`.rds` one module each;
- :mod:`.probe_mariadb` the probe's MariaDB driver (first-writable routing);
- :mod:`.drill` a planned drill from preflight to record; :mod:`.record` the JSON evidence.

docs/failover-drills.md is the on-call text. Importing this package imports no database driver.
"""

from __future__ import annotations
